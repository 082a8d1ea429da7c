// What the server tells the page, in <script type="application/json" id="bootstrap"> (filled
// by gatehouse_web::console_html / approve_html, escaped so it cannot end the script element).
export interface SignedInUser {
  /** The principal the session authenticates (`alice@example.com`). */
  principal: string;
  /** A display name, when the identity provider gave one. */
  name?: string | null;
}

export interface Bootstrap {
  user?: SignedInUser | null;
  /** Sent back in the `X-CSRF-Token` header of every state-changing request. */
  csrf_token?: string | null;
  /** Prefix of the JSON API (`/v1/...`); "" when it is at the root of the same origin. */
  api_base?: string;
  /** Where the page itself lives (`/console/`, `/holds/`). */
  page_base?: string;
  /** The sign-in endpoint; `return_to`, `prompt` and `max_age` are added to it. */
  signin_path?: string;
  /** The checkpoint verifier key the server is configured with (signed-note vkey). */
  checkpoint_vkey?: string | null;
  /** Witness verifier keys (cosignature/v1 vkeys), to check cosignatures with. */
  witness_vkeys?: string[];
  /** The approver page: the hold it shows. */
  hold_id?: string | null;
}

export function readBootstrap(): Bootstrap {
  const el = document.getElementById("bootstrap");
  if (!el?.textContent) return {};
  try {
    const value = JSON.parse(el.textContent) as unknown;
    return typeof value === "object" && value !== null ? (value as Bootstrap) : {};
  } catch {
    return {};
  }
}

/** The sign-in URL that comes back to this page (`prompt=login` and `max_age` for a step-up). */
export function signInUrl(boot: Bootstrap, options: { fresh?: boolean; maxAge?: number } = {}): string {
  const params = new URLSearchParams({ return_to: location.pathname + location.search });
  if (options.fresh) {
    params.set("prompt", "login");
    params.set("max_age", String(options.maxAge ?? 0));
  }
  return `${boot.signin_path ?? "/signin"}?${params}`;
}
