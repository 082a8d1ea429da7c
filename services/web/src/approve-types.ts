// The hold the approver page shows: `GET /v1/approvals/{id}` of the approval service.
// The fields marked "new" are additions to today's `HoldSummary` (services/approval/src/api.rs);
// the page copes with their absence (an older server), showing less.

/** One vote, as `VoteSummary` today, plus the voter's comment. */
export interface Vote {
  approver: string;
  vote: "approve" | "deny" | "withdraw";
  /** slack, teams, discord or api. */
  channel: string;
  /** button, reaction or command. */
  via: string;
  at: string;
  /** new: the comment given with the vote. */
  comment?: string | null;
}

/** new: the request body as recorded, after masking (never the raw body). */
export interface HoldBody {
  /** `application/json`, `application/yaml`, `application/merge-patch+json`, … */
  content_type: string;
  /** True when policy masked something in it. */
  masked: boolean;
  /** The body when it is JSON (or YAML read as JSON), masked values as the masker wrote them. */
  value?: unknown;
  /** Otherwise its text (masked); absent for a binary body. */
  text?: string | null;
  /** Set when the body is not shown (too large, binary): why. */
  omitted?: string | null;
}

/**
 * new: for `patch` and `update`, the object now and as it would be after the change, both masked
 * the same way, so an approver sees exactly what changes. `current` is null when the object
 * could not be read (the reason in `note`); `proposed` is null when the patch cannot be applied.
 */
export interface ObjectChange {
  current: unknown | null;
  proposed: unknown | null;
  /** For a patch: its type (`application/strategic-merge-patch+json`, `json-patch`, …). */
  patch_type?: string | null;
  /** When the server read `current` (RFC 3339): the object may change before approval. */
  read_at?: string | null;
  note?: string | null;
}

/** new: what the signed-in approver may do with this hold. */
export interface Viewer {
  principal: string;
  /** False for the requester itself, someone outside the approver groups, or a decided hold. */
  can_vote: boolean;
  /** Why not, in one sentence, when `can_vote` is false. */
  cannot_vote_reason?: string | null;
  /** This approver's current vote, if any. */
  own_vote?: "approve" | "deny" | null;
}

export interface Hold {
  approval_id: string;
  request_id: string;
  state: "pending" | "approved" | "denied" | "expired" | "withdrawn";
  principal: string;
  owner: string | null;
  team: string | null;
  verb: string;
  /** `group/resource[/subresource]`, or `resource` for the core group. */
  resource: string;
  namespace: string;
  name: string;
  /** What the caller said it needed this for (`X-Gatehouse-Reason`). */
  reason: string | null;
  rule: string;
  approver_groups: string[];
  quorum: number;
  /** RFC 3339: the hold expires (and is denied) then. */
  expires_at: string;
  votes: Vote[];
  decided_at: string | null;
  grant_id: string | null;

  /** new: when the request was held (RFC 3339). */
  held_at?: string | null;
  /** new: the identity's purpose from the registry. */
  purpose?: string | null;
  /** new: the API group and subresource (`apps`, `scale`), for a precise resource line. */
  api_group?: string | null;
  subresource?: string | null;
  /** new: the masked request body. */
  body?: HoldBody | null;
  /** new: the change, for patch and update. */
  change?: ObjectChange | null;
  /** new: the viewer's standing. */
  viewer?: Viewer | null;
  /**
   * new: the policy wants a recent sign-in to vote on this hold and the session's is older:
   * the page offers to sign in again with `prompt=login&max_age=step_up_max_age`.
   */
  step_up_required?: boolean;
  /** new: the most a sign-in may be old, in seconds, for `max_age`. */
  step_up_max_age?: number | null;
}

/** `POST /v1/approvals/{id}/vote` (with `X-CSRF-Token`), as today. */
export interface VoteRequest {
  vote: "approve" | "deny" | "withdraw";
  comment?: string | null;
}

/** Its answer, as today (`VoteResult`); a refusal comes with status 403 and the same shape. */
export interface VoteResult {
  counted: boolean;
  repeat: boolean;
  refusal: string | null;
  hold: Hold | null;
  /** new: set with a 401/403 when the vote needs a fresh sign-in. */
  step_up_required?: boolean;
}
