export function createDriver(): never { throw new Error("todo"); }
