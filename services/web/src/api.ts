// Calls to the same-origin JSON APIs: the session cookie authenticates, errors come back as
// {"error": "..."} and are turned into one readable message.
import type { Bootstrap } from "./bootstrap";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The answer's JSON, when it had one (a refused vote carries the hold). */
    readonly body: unknown = null,
  ) {
    super(message);
  }

  /** A fresh sign-in is needed: the server said so, in a 401 or in a 403's reason. */
  get stepUp(): boolean {
    const b = this.body as { step_up_required?: boolean; reason?: string } | null;
    return Boolean(b?.step_up_required) || b?.reason === "step_up_required";
  }
}

export function apiUrl(boot: Bootstrap, path: string, params?: URLSearchParams): string {
  const query = params && [...params.keys()].length > 0 ? `?${params}` : "";
  return `${boot.api_base ?? ""}${path}${query}`;
}

async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => "");
  let body: unknown = null;
  let message = "";
  try {
    body = JSON.parse(text);
    const b = body as { error?: unknown; refusal?: unknown };
    message = typeof b.error === "string" ? b.error : typeof b.refusal === "string" ? b.refusal : "";
  } catch {
    message = text.slice(0, 300);
  }
  return new ApiError(response.status, message || `${response.status} ${response.statusText}`, body);
}

/** GET, returning the response (checked) for the caller to read as text, JSON or a stream. */
export async function get(url: string, accept = "application/json"): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, { credentials: "same-origin", headers: { accept } });
  } catch (e) {
    throw new ApiError(0, `the server could not be reached (${(e as Error).message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson<T>(url: string): Promise<T> {
  return (await (await get(url)).json()) as T;
}

export async function postJson<T>(boot: Bootstrap, url: string, body: unknown): Promise<T> {
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        accept: "application/json",
        "content-type": "application/json",
        "x-csrf-token": boot.csrf_token ?? "",
      },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the server could not be reached (${(e as Error).message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return (await response.json()) as T;
}

/** What to tell a person about a failed call. */
export function describeError(e: unknown): { title: string; message: string; signIn: boolean } {
  if (!(e instanceof ApiError)) {
    return { title: "Something went wrong", message: (e as Error)?.message ?? String(e), signIn: false };
  }
  switch (e.status) {
    case 0:
      return { title: "Not connected", message: e.message, signIn: false };
    case 401:
      return { title: "Sign-in needed", message: e.message, signIn: true };
    case 403:
      return { title: "Not allowed", message: e.message, signIn: e.stepUp };
    case 404:
      return { title: "Not found", message: e.message, signIn: false };
    case 503:
      return { title: "Unavailable", message: `${e.message} Try again shortly.`, signIn: false };
    default:
      return { title: `Error ${e.status}`, message: e.message, signIn: false };
  }
}
