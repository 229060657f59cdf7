// NodeId syntax check without node-opcua: the config schema uses it, and the schema must stay
// loadable by a gateway that never talks OPC UA (node-opcua costs ~65 MB of RSS).
//
// The string form of OPC 10000-6 §5.3.1.10: [ns=<namespace index>;]<type>=<identifier> with
//   i= numeric (UInt32), s= string, g= GUID, b= opaque (ByteString, base64),
// and, as in an ExpandedNodeId, nsu=<namespace URI>; instead of ns=: the index of a namespace
// may change when the server restarts or is reconfigured, its URI does not. The driver looks the
// URI up in the server's NamespaceArray on every connection. In the URI, ";" is written %3B and
// "%" is written %25 (OPC 10000-6 §5.1.12).

const FORMS =
  'such as "ns=3;s=Line1.Speed", "ns=2;i=1001", "nsu=urn:plant:line1;s=Speed", "ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63" or "ns=2;b=M/RbKBsRVkePCePcx24oRA=="';
const NODE_ID = /^(?:ns=(\d+);|nsu=([^;]*);)?([isgb])=(.*)$/s;
const GUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Undefined when `text` is a valid NodeId string, otherwise what is wrong with it, readable. */
export function nodeIdProblem(text: string): string | undefined {
  const match = NODE_ID.exec(text);
  if (!match) return `not an OPC UA NodeId: expected [ns=<index>;|nsu=<namespace URI>;]<i|s|g|b>=<identifier>, ${FORMS}`;
  const [, namespace, namespaceUri, kind, identifier = ''] = match;
  if (namespace !== undefined && Number(namespace) > 65535) return `namespace index ${namespace} is out of range (0..65535)`;
  if (namespaceUri !== undefined && namespaceUri.length === 0) return '"nsu=" needs a namespace URI, e.g. "nsu=urn:plant:line1;s=Speed"';
  if (namespaceUri !== undefined && decodeUri(namespaceUri) === undefined)
    return `"nsu=${namespaceUri}": a "%" must start an escape such as %3B (for ";") or %25 (for "%")`;
  switch (kind) {
    case 'i':
      if (!/^\d+$/.test(identifier) || Number(identifier) > 4294967295)
        return `"i=" takes a number from 0 to 4294967295, got "${identifier}"`;
      return undefined;
    case 's':
      if (identifier.length === 0) return '"s=" needs a string identifier, e.g. "ns=3;s=Line1.Speed"';
      if (identifier.length > 4096) return 'string identifiers are limited to 4096 characters';
      return undefined;
    case 'g':
      if (!GUID.test(identifier)) return `"g=" takes a GUID such as 72962b91-fa75-4ae6-8d28-b404dc7daf63, got "${identifier}"`;
      return undefined;
    default:
      if (identifier.length === 0 || !BASE64.test(identifier))
        return `"b=" takes base64 bytes such as M/RbKBsRVkePCePcx24oRA==, got "${identifier}"`;
      return undefined;
  }
}

/** The URI with its %XX escapes decoded; undefined when an escape is malformed. */
function decodeUri(escaped: string): string | undefined {
  try {
    return decodeURIComponent(escaped);
  } catch {
    return undefined;
  }
}

/** "nsu=<uri>;<rest>" split into the (decoded) URI and the NodeId without namespace; undefined for other forms. */
export function splitNamespaceUri(text: string): { uri: string; local: string } | undefined {
  const match = /^nsu=([^;]+);(.*)$/s.exec(text);
  return match ? { uri: decodeUri(match[1]!) ?? match[1]!, local: match[2]! } : undefined;
}

/** "nsu=<uri>;<rest>" as "ns=<index>;<rest>" for a server with these namespaces; other forms unchanged. */
export function withNamespaceIndex(text: string, namespaces: readonly string[]): { nodeId: string } | { problem: string } {
  const split = splitNamespaceUri(text);
  if (!split) return { nodeId: text };
  const index = namespaces.indexOf(split.uri);
  if (index < 0)
    return {
      problem:
        namespaces.length === 0
          ? `the server did not return its NamespaceArray, so "${split.uri}" cannot be looked up`
          : `the server has no namespace "${split.uri}" (its NamespaceArray: ${namespaces.join(', ')})`,
    };
  return { nodeId: `ns=${index};${split.local}` };
}

/** "ns=<index>;<rest>" as "nsu=<uri>;<rest>" (not for namespace 0), with ";" and "%" in the URI escaped. */
export function withNamespaceUri(text: string, namespaces: readonly string[]): string {
  const match = /^ns=(\d+);(.*)$/s.exec(text);
  const uri = match ? namespaces[Number(match[1])] : undefined;
  if (!match || match[1] === '0' || uri === undefined || uri.length === 0) return text;
  return `nsu=${uri.replaceAll('%', '%25').replaceAll(';', '%3B')};${match[2]!}`;
}
