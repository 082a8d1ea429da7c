// The approver page: one hold, what it would change, the votes so far, a live deadline, and
// approve / deny with a comment. Votes are POSTed with the CSRF token from the bootstrap.
import "./style.css";
import { ApiError, apiUrl, describeError, getJson, postJson } from "./api";
import type { Hold, VoteRequest, VoteResult } from "./approve-types";
import { readBootstrap, signInUrl, type Bootstrap } from "./bootstrap";
import { clear, details, h, table } from "./dom";
import { renderDiff } from "./diff-view";
import { pretty } from "./json";

const boot: Bootstrap = readBootstrap();
const main = document.getElementById("main") as HTMLElement;
let timer: number | undefined;

function holdId(): string {
  return boot.hold_id ?? decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() ?? "");
}

function holdUrl(id: string, suffix = ""): string {
  return apiUrl(boot, `/v1/approvals/${encodeURIComponent(id)}${suffix}`);
}

function signInAgain(hold: Hold | null, why: string): HTMLElement {
  return h(
    "div",
    { class: "notice error", role: "alert" },
    h("h2", {}, "Sign in again to vote"),
    h("p", {}, why),
    h("p", {}, h("a", { class: "button", href: signInUrl(boot, { fresh: true, maxAge: hold?.step_up_max_age ?? 0 }) }, "Sign in again")),
  );
}

function remaining(expiresAt: string): { text: string; over: boolean } {
  const ms = Date.parse(expiresAt) - Date.now();
  if (Number.isNaN(ms)) return { text: "unknown", over: false };
  if (ms <= 0) return { text: "expired", over: true };
  const s = Math.floor(ms / 1000);
  const parts = [Math.floor(s / 86400) && `${Math.floor(s / 86400)}d`, Math.floor((s % 86400) / 3600) && `${Math.floor((s % 86400) / 3600)}h`, `${Math.floor((s % 3600) / 60)}m`, `${s % 60}s`];
  return { text: parts.filter(Boolean).join(" ") + " left", over: false };
}

function countdown(hold: Hold, form: HTMLFormElement | null): HTMLElement {
  const out = h("span", { role: "timer", "aria-live": "off" });
  const tick = () => {
    const r = remaining(hold.expires_at);
    out.textContent = r.text;
    out.className = r.over ? "bad" : "";
    if (r.over && form) {
      for (const el of form.elements) (el as HTMLButtonElement).disabled = true;
      window.clearInterval(timer);
    }
  };
  window.clearInterval(timer);
  if (hold.state === "pending") {
    tick();
    timer = window.setInterval(tick, 1000);
  } else {
    out.textContent = hold.state;
  }
  return out;
}

function resourceLine(hold: Hold): string {
  // `resource` is already `group/resource[/subresource]`, as the chat messages show it.
  const resource = hold.resource;
  const object = [hold.namespace, hold.name].filter(Boolean).join("/");
  return `${hold.verb} ${resource}${object ? ` ${object}` : ""}`;
}

function voteForm(hold: Hold, message: HTMLElement): HTMLFormElement | null {
  if (hold.state !== "pending") return null;
  const viewer = hold.viewer;
  const comment = h("textarea", { id: "comment", name: "comment", rows: 3, maxlength: 1000 });
  const approve = h("button", { type: "submit", name: "vote", value: "approve", class: "approve" }, "Approve");
  const deny = h("button", { type: "submit", name: "vote", value: "deny", class: "deny" }, "Deny");
  const form = h(
    "form",
    { class: "vote", "aria-labelledby": "vote-h" },
    h("h2", { id: "vote-h" }, "Your decision"),
    viewer?.own_vote ? h("p", {}, `You voted ${viewer.own_vote}; voting again replaces it.`) : null,
    h("label", { for: "comment" }, "Comment (recorded with your vote)"),
    comment,
    h("div", { class: "actions" }, approve, deny),
  );
  if (viewer && !viewer.can_vote) {
    for (const b of [approve, deny, comment]) b.disabled = true;
    form.insertBefore(h("p", { class: "bad" }, viewer.cannot_vote_reason ?? "You cannot vote on this hold."), comment.previousSibling);
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const submitter = (e as SubmitEvent).submitter as HTMLButtonElement | null;
    const vote = (submitter?.value ?? "") as VoteRequest["vote"];
    if (vote !== "approve" && vote !== "deny") return;
    void cast(hold, { vote, comment: comment.value.trim() || null }, form, message);
  });
  return form;
}

async function cast(hold: Hold, body: VoteRequest, form: HTMLFormElement, message: HTMLElement): Promise<void> {
  for (const el of form.elements) (el as HTMLButtonElement).disabled = true;
  clear(message, h("p", { role: "status" }, "Sending your vote…"));
  try {
    const result = await postJson<VoteResult>(boot, holdUrl(hold.approval_id, "/vote"), body);
    show(result.hold ?? hold, h("p", { class: "notice ok", role: "status" }, result.repeat ? "Your vote was already counted." : `Your ${body.vote} was counted.`));
  } catch (e) {
    const refused = e instanceof ApiError ? (e.body as VoteResult | null) : null;
    const current = refused?.hold ?? hold;
    if (e instanceof ApiError && (e.stepUp || refused?.step_up_required || current.step_up_required)) {
      show(current, signInAgain(current, e.message));
      return;
    }
    const { title, message: text, signIn } = describeError(e);
    show(current, h("div", { class: "notice error", role: "alert" }, h("h2", {}, title), h("p", {}, text),
      signIn ? h("p", {}, h("a", { class: "button", href: signInUrl(boot) }, "Sign in")) : null));
  }
}

function show(hold: Hold, notice: HTMLElement | null = null): void {
  const message = h("div", {});
  if (notice) message.append(notice);
  if (hold.step_up_required && !notice) message.append(signInAgain(hold, "This hold needs a recent sign-in before you vote."));
  const form = hold.step_up_required ? null : voteForm(hold, message);
  const votes = hold.votes.length
    ? table(`Votes (${hold.votes.filter((v) => v.vote === "approve").length} of ${hold.quorum} approvals needed)`, ["Approver", "Vote", "Where", "When", "Comment"],
        hold.votes.map((v) => [v.approver, v.vote, `${v.channel} (${v.via})`, v.at, v.comment ?? ""]))
    : h("p", { class: "muted" }, `No votes yet; ${hold.quorum} approval${hold.quorum === 1 ? "" : "s"} needed.`);
  const change = hold.change;
  const bodyView = hold.body
    ? hold.body.omitted
      ? h("p", { class: "muted" }, `Not shown: ${hold.body.omitted}`)
      : h("pre", { class: "json", tabindex: 0, "aria-label": "Request body" }, h("code", {}, hold.body.value !== undefined ? pretty(hold.body.value) : hold.body.text ?? ""))
    : null;
  clear(
    main,
    h("h1", {}, `${hold.state === "pending" ? "Approve or deny" : "Hold"}: ${resourceLine(hold)}`),
    message,
    details([
      ["State", hold.state + (hold.decided_at ? ` at ${hold.decided_at}` : "")],
      ["Deadline", hold.state === "pending" ? [h("time", { datetime: hold.expires_at }, hold.expires_at), " · ", countdown(hold, form)] : hold.expires_at],
      ["Requested by", hold.principal],
      ["Owner", [hold.owner, hold.team && `team ${hold.team}`].filter(Boolean).join(", ")],
      ["Purpose", hold.purpose ?? ""],
      ["Reason given", hold.reason ?? h("em", {}, "none given")],
      ["Verb", hold.verb],
      ["Resource", hold.resource],
      ["Namespace", hold.namespace],
      ["Name", hold.name],
      ["Rule", hold.rule],
      ["Approvers", `${hold.approver_groups.join(", ")} (quorum ${hold.quorum})`],
      ["Held at", hold.held_at ?? ""],
      ["Request id", hold.request_id],
      ["Grant", hold.grant_id ?? ""],
    ]),
    change
      ? [h("h2", {}, "What changes"),
        change.note ? h("p", { class: "muted" }, change.note) : null,
        change.read_at ? h("p", { class: "muted" }, `Current object as read at ${change.read_at}.`) : null,
        change.current !== null || change.proposed !== null ? renderDiff(change.current, change.proposed) : null]
      : null,
    bodyView ? [h("h2", {}, hold.body?.masked ? "Request body (masked)" : "Request body"), bodyView] : null,
    h("h2", {}, "Votes"),
    votes,
    form,
  );
}

async function start(): Promise<void> {
  const user = document.getElementById("user");
  if (user) clear(user, boot.user ? `Signed in as ${boot.user.principal}` : h("a", { href: signInUrl(boot) }, "Sign in"));
  const id = holdId();
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(id)) {
    clear(main, h("div", { class: "notice error", role: "alert" }, h("h2", {}, "No such hold"), h("p", {}, "The link does not name a hold.")));
    return;
  }
  clear(main, h("p", { role: "status" }, "Loading the hold…"));
  try {
    show(await getJson<Hold>(holdUrl(id)));
  } catch (e) {
    if (e instanceof ApiError && e.stepUp) {
      clear(main, signInAgain(null, e.message));
      return;
    }
    const { title, message, signIn } = describeError(e);
    clear(main, h("div", { class: "notice error", role: "alert" }, h("h2", {}, title), h("p", {}, message),
      signIn ? h("p", {}, h("a", { class: "button", href: signInUrl(boot) }, "Sign in")) : null));
  }
}

void start();
