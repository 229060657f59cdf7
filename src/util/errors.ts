// The readable message of anything thrown, for logs and bad-quality reasons.
export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  if (error !== null && typeof error === 'object' && 'message' in error) return String((error as { message: unknown }).message);
  return String(error);
}
