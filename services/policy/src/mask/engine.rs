//! The streaming masker: a copy-through JSON walker.
//!
//! Input bytes are copied to the output untouched except for the scalar tokens a rule selects,
//! which are replaced in place. Nothing is parsed into a tree: the engine keeps a stack of the
//! containers it is inside ([`Frame`]), what each one is ([`Role`]: a Kubernetes object, its
//! metadata, a list's `items`, a table's `rows`, a watch event...), and which profile paths are
//! still live there (an arena of [`Entry`]s, one range per frame). A container where no rule
//! can apply (no live path, no mask, no patterns: most of a pod's `spec` and `status`) is
//! skimmed: its tokens are still checked as strictly, but without any of that bookkeeping.
//!
//! Two decisions can depend on something later in the same object:
//! - whether `data` / `stringData` belong to a Secret, when `kind` comes after them (unstructured
//!   objects have their keys sorted: `apiVersion`, `data`, `kind`...);
//! - whether an env-style `value` is masked, when its `name` comes after it.
//!
//! Then the engine stops before the value and a [`Lookahead`] scans forward in the same object
//! for the member it needs, holding input (never more than the rest of that object) until it
//! knows. In what kube-apiserver sends for built-in types `kind` and `name` come first, so this
//! rarely happens.
//!
//! The one thing parsed whole is the `kubectl.kubernetes.io/last-applied-configuration`
//! annotation: its text is a JSON document of its own, masked by a nested engine.

use bytes::BytesMut;

use super::lex::{self, LexError, Lexed, StrHint, Tok, Token};
use super::profile::{Action, Profile};
use super::{LAST_APPLIED, MASKED_BASE64, MASKED_TEXT, MaskError};

/// How deep last-applied annotations may nest inside each other before the whole inner text is
/// treated as one value.
const MAX_NESTING: u8 = 4;

/// What a masked string becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    Text,
    Base64,
}

/// What the engine knows about a Kubernetes object's `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Not seen yet.
    Unresolved,
    /// The object has no `kind` (or it came too late to wait for): treated as maybe a Secret.
    Absent,
    Secret,
    ConfigMap,
    Table,
    /// `XList` (or `List`): its `items` are objects of kind `X`.
    List(ItemKind),
    Other,
}

/// The kind of a list's items, inferred from the list's kind (items carry no `kind` of their
/// own in typed lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ItemKind {
    Unresolved,
    Secret,
    ConfigMap,
    Other,
}

fn classify(kind: &str) -> Kind {
    match kind {
        "Secret" => Kind::Secret,
        "ConfigMap" => Kind::ConfigMap,
        "Table" => Kind::Table,
        "List" => Kind::List(ItemKind::Unresolved),
        _ => match kind.strip_suffix("List") {
            Some("Secret") => Kind::List(ItemKind::Secret),
            Some("ConfigMap") => Kind::List(ItemKind::ConfigMap),
            Some(item) if !item.is_empty() => Kind::List(ItemKind::Other),
            _ => Kind::Other,
        },
    }
}

impl From<ItemKind> for Kind {
    fn from(k: ItemKind) -> Kind {
        match k {
            ItemKind::Unresolved => Kind::Unresolved,
            ItemKind::Secret => Kind::Secret,
            ItemKind::ConfigMap => Kind::ConfigMap,
            ItemKind::Other => Kind::Other,
        }
    }
}

/// Whether an object is treated as a Secret: `None` while that depends on a `kind` not seen yet.
fn is_secret(kind: Kind, forced: bool) -> Option<bool> {
    if forced {
        return Some(true);
    }
    match kind {
        Kind::Secret | Kind::Absent => Some(true),
        Kind::Unresolved => None,
        Kind::ConfigMap | Kind::Table | Kind::List(_) | Kind::Other => Some(false),
    }
}

/// What a container is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A Kubernetes object (profile paths start here). `top`: the whole response body, which
    /// may turn out to be a list or a table.
    Object { kind: Kind, top: bool },
    /// An object's `metadata`.
    Meta,
    /// An object's `metadata.annotations`.
    Annotations,
    /// Anything else inside an object.
    Plain,
    /// Outside any object: list and table wrappers, table cells.
    Envelope,
    /// A list's `items`: each element is an object.
    Items(ItemKind),
    /// A table's `rows`.
    Rows,
    /// One table row: its `object` is an object; `cells` are envelope.
    Row,
    /// A top-level array: each element is an object.
    Elements,
}

impl Role {
    fn fits(self, obj: bool) -> bool {
        match self {
            Role::Object { .. } | Role::Meta | Role::Annotations | Role::Row => obj,
            Role::Items(_) | Role::Rows | Role::Elements => !obj,
            Role::Plain | Role::Envelope => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    KeyOrEnd,
    Key,
    Colon,
    Value,
    ValueOrEnd,
    CommaOrEnd,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    obj: bool,
    expect: Expect,
    role: Role,
    /// Everything inside is masked.
    mask: Option<Flavor>,
    /// The members are base64 (Secret `data`, ConfigMap `binaryData`).
    b64_children: bool,
    /// This frame's live profile state: `arena[states.0..states.1]`.
    states: (u32, u32),
    /// Next element index (arrays).
    index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Unknown,
    Yes,
    No,
}

/// Live profile state at a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Rule `rule` has matched its first `seg` segments.
    Path { rule: u16, seg: u16 },
    /// This object is a map for `keys[spec]`.
    KeyMap { spec: u16 },
    /// This object holds a name/value pair for `named[spec]` (or, on an array, every element
    /// does); `decision` is whether its name matched.
    Named { spec: u16, decision: Decision },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Special {
    #[default]
    None,
    /// The object's `kind`.
    Kind,
    /// The last-applied-configuration annotation.
    LastApplied,
}

/// What to do with the value about to be read (an object member or an array element).
#[derive(Debug)]
struct Plan {
    ready: bool,
    mask: Option<Flavor>,
    /// The value sits in a base64 map.
    b64: bool,
    /// The value is a base64 map.
    b64_children: bool,
    role: Role,
    /// The role if the value is not the container `role` expects.
    fallback: Role,
    special: Special,
    /// `data` / `stringData` of an object whose kind is not known yet.
    pending_kind: Option<Flavor>,
    /// `Named` entries (arena indices) whose decision masks this value.
    pending_named: Vec<u32>,
    /// `Named` entries whose name this value is.
    captures: Vec<u32>,
    /// Where this value's own profile state starts in the arena.
    states_from: u32,
}

impl Plan {
    fn new() -> Plan {
        Plan {
            ready: false,
            mask: None,
            b64: false,
            b64_children: false,
            role: Role::Envelope,
            fallback: Role::Envelope,
            special: Special::None,
            pending_kind: None,
            pending_named: Vec::new(),
            captures: Vec::new(),
            states_from: 0,
        }
    }

    fn reset(&mut self, states_from: usize) {
        self.ready = true;
        self.mask = None;
        self.b64 = false;
        self.b64_children = false;
        self.role = Role::Envelope;
        self.fallback = Role::Envelope;
        self.special = Special::None;
        self.pending_kind = None;
        self.pending_named.clear();
        self.captures.clear();
        self.states_from = states_from as u32;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    /// The current object's `kind`; `stop_at_lists`: give up at `items` / `rows` / `object`
    /// (the body may be a long list or a large event, which must not be held; giving up means
    /// the kind is taken as absent, so the value is masked).
    Kind { stop_at_lists: bool },
    /// The name for the `Named` entry at this arena index.
    Name { entry: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaState {
    Value,
    AfterValue,
    Key,
    Colon(KeyClass),
    Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyClass {
    Target,
    Stop,
    Other,
}

/// A forward scan through the rest of the current object for one member.
#[derive(Debug)]
struct Lookahead {
    goal: Goal,
    pos: usize,
    depth: u32,
    state: LaState,
    hint: Option<StrHint>,
}

enum Found {
    Str(String),
    Nothing,
}

impl Lookahead {
    /// `Ok(None)`: more input needed.
    fn step(&mut self, buf: &[u8], eof: bool, target: &[u8]) -> Result<Option<Found>, LexError> {
        loop {
            let tok = match lex::next(buf, self.pos, eof, &mut self.hint)? {
                Lexed::Token(t) => t,
                Lexed::More => return Ok(None),
                Lexed::End if eof => return Err(LexError::Truncated(buf.len())),
                Lexed::End => return Ok(None),
            };
            self.pos = tok.end;
            if self.depth > 0 {
                match tok.kind {
                    Tok::ObjStart | Tok::ArrStart => self.depth += 1,
                    Tok::ObjEnd | Tok::ArrEnd => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            self.state = LaState::AfterValue;
                        }
                    }
                    _ => {}
                }
                continue;
            }
            self.state = match (self.state, tok.kind) {
                (LaState::Value, Tok::ObjStart | Tok::ArrStart) => {
                    self.depth = 1;
                    LaState::Value
                }
                (LaState::Value, k) if k.starts_value() => LaState::AfterValue,
                (LaState::AfterValue, Tok::Comma) => LaState::Key,
                (LaState::AfterValue, Tok::ObjEnd) => return Ok(Some(Found::Nothing)),
                (LaState::Key, Tok::Str) => {
                    let key = lex::decode(&buf[tok.start..tok.end], tok.escaped)
                        .map_err(|e| LexError::Bad(tok.start, e))?;
                    let stop = matches!(
                        self.goal,
                        Goal::Kind {
                            stop_at_lists: true
                        }
                    ) && (key == "items" || key == "rows" || key == "object");
                    LaState::Colon(if key.as_bytes() == target {
                        KeyClass::Target
                    } else if stop {
                        KeyClass::Stop
                    } else {
                        KeyClass::Other
                    })
                }
                (LaState::Colon(class), Tok::Colon) => match class {
                    KeyClass::Target => LaState::Target,
                    KeyClass::Stop => return Ok(Some(Found::Nothing)),
                    KeyClass::Other => LaState::Value,
                },
                (LaState::Target, Tok::Str) => {
                    let text = lex::decode(&buf[tok.start..tok.end], tok.escaped)
                        .map_err(|e| LexError::Bad(tok.start, e))?;
                    return Ok(Some(Found::Str(text.into_owned())));
                }
                (LaState::Target, k) if k.starts_value() => return Ok(Some(Found::Nothing)),
                _ => return Err(LexError::Bad(tok.start, "unexpected token")),
            };
        }
    }
}

/// Where the engine writes and which profile it applies.
pub(crate) struct Cx<'a> {
    pub(crate) profile: Option<&'a Profile>,
    pub(crate) out: &'a mut BytesMut,
}

/// The masking state machine. The profile is passed in on each call (see [`Cx`]) so the same
/// engine serves an owned `Arc<Profile>` ([`super::Masker`]) and a borrowed one.
#[derive(Debug)]
pub(crate) struct Engine {
    forced_secret: bool,
    /// More than one document may follow (a watch stream is one per event).
    stream: bool,
    nesting: u8,
    /// Input not yet processed (plus, during a lookahead, the input it holds).
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`, for error messages.
    base: u64,
    /// Parse position in `buf`.
    pos: usize,
    /// `buf[..emitted]` has been written out.
    emitted: usize,
    hint: Option<StrHint>,
    stack: Vec<Frame>,
    arena: Vec<Entry>,
    plan: Plan,
    lookahead: Option<Lookahead>,
    docs: u64,
    masked: u64,
    failed: Option<MaskError>,
    finished: bool,
    /// A token has been read: from then on bad input is malformed JSON, not "not JSON".
    seen_token: bool,
    /// Inside a container where no rule can apply: tokens are checked and copied, nothing
    /// more. `skim_stack` holds the open containers (true: object).
    skimming: bool,
    skim_stack: Vec<bool>,
    skim_expect: Expect,
}

impl Engine {
    /// `forced_secret`: every object is a Secret (the request is for core `secrets`).
    /// `stream`: the body may hold several documents one after the other (a watch stream);
    /// each is read for what it is, whatever the request was.
    pub(crate) fn new(forced_secret: bool, stream: bool) -> Engine {
        Engine {
            forced_secret,
            stream,
            nesting: 0,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            emitted: 0,
            hint: None,
            stack: Vec::new(),
            arena: Vec::new(),
            plan: Plan::new(),
            lookahead: None,
            docs: 0,
            masked: 0,
            failed: None,
            finished: false,
            seen_token: false,
            skimming: false,
            skim_stack: Vec::new(),
            skim_expect: Expect::Value,
        }
    }

    pub(crate) fn masked(&self) -> u64 {
        self.masked
    }

    pub(crate) fn push(&mut self, cx: &mut Cx<'_>, chunk: &[u8]) -> Result<(), MaskError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.finished {
            return Err(MaskError::Finished);
        }
        self.buf.extend_from_slice(chunk);
        match self.run(cx, false) {
            Ok(()) => {
                self.flush(cx);
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    pub(crate) fn finish(&mut self, cx: &mut Cx<'_>) -> Result<(), MaskError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.finished {
            return Ok(());
        }
        let result = self.run(cx, true).and_then(|()| {
            if self.stack.is_empty() && self.lookahead.is_none() && !self.skimming {
                Ok(())
            } else {
                Err(MaskError::Truncated {
                    offset: self.base + self.buf.len() as u64,
                })
            }
        });
        match result {
            Ok(()) => {
                self.flush(cx);
                self.finished = true;
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Writes out what has been processed, plus any whitespace after it (a watch event's
    /// newline goes out with the event, for clients that read line by line), and forgets it.
    fn flush(&mut self, cx: &mut Cx<'_>) {
        while self.pos < self.buf.len() && lex::is_ws(self.buf[self.pos]) {
            self.pos += 1;
        }
        let done = self.pos;
        cx.out.extend_from_slice(&self.buf[self.emitted..done]);
        self.buf.drain(..done);
        self.base += done as u64;
        self.pos = 0;
        self.emitted = 0;
        StrHint::shift(&mut self.hint, done);
        if let Some(la) = &mut self.lookahead {
            la.pos -= done;
            StrHint::shift(&mut la.hint, done);
        }
    }

    fn lex_error(&self, e: LexError) -> MaskError {
        match e {
            LexError::Truncated(at) => MaskError::Truncated {
                offset: self.base + at as u64,
            },
            LexError::Bad(at, reason) => {
                if !self.seen_token {
                    MaskError::NotJson
                } else {
                    MaskError::Malformed {
                        offset: self.base + at as u64,
                        reason,
                    }
                }
            }
        }
    }

    fn malformed(&self, at: usize, reason: &'static str) -> MaskError {
        MaskError::Malformed {
            offset: self.base + at as u64,
            reason,
        }
    }

    fn run(&mut self, cx: &mut Cx<'_>, eof: bool) -> Result<(), MaskError> {
        loop {
            if self.lookahead.is_some() && !self.step_lookahead(cx, eof)? {
                return Ok(());
            }
            if self.skimming {
                if !self.skim(eof)? {
                    return Ok(());
                }
                continue;
            }
            let tok = match lex::next(&self.buf, self.pos, eof, &mut self.hint) {
                Ok(Lexed::Token(t)) => t,
                Ok(Lexed::More | Lexed::End) => return Ok(()),
                Err(e) => return Err(self.lex_error(e)),
            };
            self.on_token(cx, tok)?;
        }
    }

    /// Checks and passes over the tokens of a container no rule looks into (most of a pod's
    /// `spec` and `status` when there are no patterns); true once it has closed. As strict as
    /// the full walk, only without roles, plans and profile state.
    fn skim(&mut self, eof: bool) -> Result<bool, MaskError> {
        loop {
            let tok = match lex::next(&self.buf, self.pos, eof, &mut self.hint) {
                Ok(Lexed::Token(t)) => t,
                Ok(Lexed::More | Lexed::End) => return Ok(false),
                Err(e) => return Err(self.lex_error(e)),
            };
            let obj = self.skim_stack.last().copied().unwrap_or(false);
            self.skim_expect = match (self.skim_expect, tok.kind) {
                (Expect::KeyOrEnd | Expect::CommaOrEnd, Tok::ObjEnd) if obj => {
                    self.skim_stack.pop();
                    Expect::CommaOrEnd
                }
                (Expect::ValueOrEnd | Expect::CommaOrEnd, Tok::ArrEnd) if !obj => {
                    self.skim_stack.pop();
                    Expect::CommaOrEnd
                }
                (Expect::KeyOrEnd | Expect::Key, Tok::Str) => Expect::Colon,
                (Expect::Colon, Tok::Colon) => Expect::Value,
                (Expect::CommaOrEnd, Tok::Comma) => {
                    if obj {
                        Expect::Key
                    } else {
                        Expect::Value
                    }
                }
                (Expect::Value | Expect::ValueOrEnd, Tok::ObjStart) => {
                    self.skim_stack.push(true);
                    Expect::KeyOrEnd
                }
                (Expect::Value | Expect::ValueOrEnd, Tok::ArrStart) => {
                    self.skim_stack.push(false);
                    Expect::ValueOrEnd
                }
                (Expect::Value | Expect::ValueOrEnd, k) if k.starts_value() => Expect::CommaOrEnd,
                _ => return Err(self.malformed(tok.start, "unexpected token")),
            };
            self.pos = tok.end;
            if self.skim_stack.is_empty() {
                // The container is over: it was one value of its parent.
                self.skimming = false;
                if self.stack.is_empty() {
                    self.docs += 1;
                }
                return Ok(true);
            }
        }
    }

    /// Runs the pending lookahead; true once it has its answer.
    fn step_lookahead(&mut self, cx: &mut Cx<'_>, eof: bool) -> Result<bool, MaskError> {
        let Some(la) = &mut self.lookahead else {
            return Ok(true);
        };
        let target: &[u8] = match la.goal {
            Goal::Kind { .. } => b"kind",
            Goal::Name { entry } => match (self.arena.get(entry as usize), cx.profile) {
                (Some(Entry::Named { spec, .. }), Some(p)) => p
                    .named
                    .get(usize::from(*spec))
                    .map(|n| n.name_field.as_bytes())
                    .unwrap_or_default(),
                _ => b"",
            },
        };
        let found = match la.step(&self.buf, eof, target) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(false),
            Err(e) => {
                return Err(match e {
                    LexError::Truncated(at) => MaskError::Truncated {
                        offset: self.base + at as u64,
                    },
                    LexError::Bad(at, reason) => self.malformed(at, reason),
                });
            }
        };
        let goal = la.goal;
        self.lookahead = None;
        match goal {
            Goal::Kind { .. } => {
                let kind = match found {
                    Found::Str(k) => classify(&k),
                    Found::Nothing => Kind::Absent,
                };
                if let Some(Frame {
                    role: Role::Object { kind: k, .. },
                    ..
                }) = self.stack.last_mut()
                {
                    *k = kind;
                }
            }
            Goal::Name { entry } => {
                if let Some(Entry::Named { spec, decision }) = self.arena.get_mut(entry as usize) {
                    let matched = match (&found, cx.profile) {
                        (Found::Str(name), Some(p)) => p
                            .named
                            .get(usize::from(*spec))
                            .is_some_and(|n| n.matching.is_match(name)),
                        _ => false,
                    };
                    *decision = if matched { Decision::Yes } else { Decision::No };
                }
            }
        }
        Ok(true)
    }

    fn on_token(&mut self, cx: &mut Cx<'_>, tok: Token) -> Result<(), MaskError> {
        let Some(frame) = self.stack.last_mut() else {
            let result = self.on_top(cx, tok);
            self.seen_token = true;
            return result;
        };
        match (frame.expect, tok.kind) {
            (Expect::KeyOrEnd | Expect::CommaOrEnd, Tok::ObjEnd) if frame.obj => {
                self.close(tok);
                Ok(())
            }
            (Expect::ValueOrEnd | Expect::CommaOrEnd, Tok::ArrEnd) if !frame.obj => {
                self.close(tok);
                Ok(())
            }
            (Expect::KeyOrEnd | Expect::Key, Tok::Str) => {
                frame.expect = Expect::Colon;
                self.pos = tok.end;
                self.plan_member(cx, tok)
            }
            (Expect::Colon, Tok::Colon) => {
                frame.expect = Expect::Value;
                self.pos = tok.end;
                Ok(())
            }
            (Expect::CommaOrEnd, Tok::Comma) => {
                frame.expect = if frame.obj {
                    Expect::Key
                } else {
                    Expect::Value
                };
                self.pos = tok.end;
                Ok(())
            }
            (Expect::Value | Expect::ValueOrEnd, k) if k.starts_value() => {
                if !self.plan.ready {
                    self.plan_element(cx);
                }
                self.on_value(cx, tok)
            }
            _ => Err(self.malformed(tok.start, "unexpected token")),
        }
    }

    /// Whether everything read so far is whole documents: what was written ends between two
    /// documents, where a watch stream can take one more event.
    pub(crate) fn between_documents(&self) -> bool {
        self.stack.is_empty() && !self.skimming && self.lookahead.is_none()
    }

    /// A value outside any container: the start of a document. Every document starts as a
    /// top-level object whose members say what it is: `items` (a list), `rows` (a table),
    /// `object` (a watch event), or an object of its own.
    fn on_top(&mut self, cx: &mut Cx<'_>, tok: Token) -> Result<(), MaskError> {
        if !self.stream && self.docs > 0 {
            return Err(MaskError::TrailingData {
                offset: self.base + tok.start as u64,
            });
        }
        if !tok.kind.starts_value() {
            return Err(if !self.seen_token {
                MaskError::NotJson
            } else {
                self.malformed(tok.start, "unexpected token")
            });
        }
        if !self.plan.ready {
            self.plan.reset(self.arena.len());
            self.plan.role = Role::Object {
                kind: Kind::Unresolved,
                top: true,
            };
            self.plan.fallback = Role::Elements;
        }
        self.on_value(cx, tok)
    }

    /// Works out the plan for the value of the member whose key is `tok`.
    fn plan_member(&mut self, cx: &mut Cx<'_>, tok: Token) -> Result<(), MaskError> {
        // Fast path: most members sit where no rule looks at keys.
        if let Some(frame) = self.stack.last()
            && (frame.mask.is_some()
                || (matches!(frame.role, Role::Plain | Role::Envelope)
                    && frame.states.0 == frame.states.1))
        {
            let (mask, b64, role) = (frame.mask, frame.b64_children, frame.role);
            self.plan.reset(self.arena.len());
            self.plan.mask = mask;
            self.plan.b64 = b64;
            let role = if mask.is_some() { Role::Plain } else { role };
            self.plan.role = role;
            self.plan.fallback = role;
            return Ok(());
        }
        let Engine {
            buf,
            stack,
            arena,
            plan,
            forced_secret,
            base,
            ..
        } = self;
        let key = lex::decode(&buf[tok.start..tok.end], tok.escaped).map_err(|reason| {
            MaskError::Malformed {
                offset: *base + tok.start as u64,
                reason,
            }
        })?;
        let key_text: &str = &key;
        let key = key_text.as_bytes();
        plan.reset(arena.len());
        let Some(frame) = stack.last().copied() else {
            return Ok(());
        };
        plan.b64 = frame.b64_children;
        if let Some(flavor) = frame.mask {
            plan.mask = Some(flavor);
            plan.role = Role::Plain;
            plan.fallback = Role::Plain;
            return Ok(());
        }
        let mut inside = true;
        match frame.role {
            Role::Envelope | Role::Items(_) | Role::Rows | Role::Elements => inside = false,
            Role::Row => {
                inside = false;
                if key == b"object" {
                    plan.role = Role::Object {
                        kind: Kind::Unresolved,
                        top: false,
                    };
                }
            }
            Role::Object { kind, top } => {
                let listish = matches!(kind, Kind::List(_) | Kind::Table);
                plan.role = Role::Plain;
                plan.fallback = Role::Plain;
                // What a document is comes from its members, not from its `kind` alone nor
                // from the request: whatever a top-level document claims, its `items` and
                // `rows` hold objects and its `object` is a watch event's object, as a
                // lenient client would read them. (No Kubernetes object has such top-level
                // fields of its own; profile paths from the top go on inside as well.)
                if key == b"items" && (matches!(kind, Kind::List(_)) || top) {
                    plan.role = Role::Items(match kind {
                        Kind::List(item) => item,
                        _ => ItemKind::Unresolved,
                    });
                } else if key == b"rows" && (kind == Kind::Table || top) {
                    plan.role = Role::Rows;
                } else if key == b"object" && top {
                    plan.role = Role::Object {
                        kind: Kind::Unresolved,
                        top: false,
                    };
                } else if listish {
                    plan.role = Role::Envelope;
                } else {
                    match key {
                        b"kind" => plan.special = Special::Kind,
                        b"metadata" => plan.role = Role::Meta,
                        b"binaryData" => plan.b64_children = true,
                        b"data" | b"stringData" => {
                            let flavor = if key == b"data" {
                                Flavor::Base64
                            } else {
                                Flavor::Text
                            };
                            match is_secret(kind, *forced_secret) {
                                Some(true) => plan.mask = Some(flavor),
                                None => plan.pending_kind = Some(flavor),
                                Some(false) => {}
                            }
                        }
                        _ => {}
                    }
                }
                if listish {
                    plan.fallback = Role::Envelope;
                    inside = false;
                }
            }
            Role::Meta => {
                plan.role = Role::Plain;
                plan.fallback = Role::Plain;
                if key == b"annotations" {
                    plan.role = Role::Annotations;
                }
            }
            Role::Annotations => {
                plan.role = Role::Plain;
                plan.fallback = Role::Plain;
                if key == LAST_APPLIED.as_bytes() {
                    plan.special = Special::LastApplied;
                }
            }
            Role::Plain => {
                plan.role = Role::Plain;
                plan.fallback = Role::Plain;
            }
        }
        if inside && let Some(p) = cx.profile {
            for i in frame.states.0..frame.states.1 {
                match arena[i as usize] {
                    Entry::Path { rule, seg } => {
                        let r = &p.rules[usize::from(rule)];
                        if r.segs[usize::from(seg)].matches_key(key) {
                            advance(p, arena, plan, rule, seg + 1);
                        }
                    }
                    Entry::KeyMap { spec } => {
                        if frame.obj && p.keys[usize::from(spec)].is_match(key_text) {
                            plan.mask = Some(Flavor::Text);
                        }
                    }
                    Entry::Named { spec, decision } => {
                        if !frame.obj {
                            continue;
                        }
                        let n = &p.named[usize::from(spec)];
                        if key == n.value_field.as_bytes() {
                            match decision {
                                Decision::Yes => plan.mask = Some(Flavor::Text),
                                Decision::No => {}
                                Decision::Unknown => plan.pending_named.push(i),
                            }
                        }
                        if key == n.name_field.as_bytes() {
                            plan.captures.push(i);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Works out the plan for the next element of the current array.
    fn plan_element(&mut self, cx: &mut Cx<'_>) {
        let Engine {
            stack, arena, plan, ..
        } = self;
        plan.reset(arena.len());
        let Some(frame) = stack.last_mut() else {
            return;
        };
        let index = frame.index;
        frame.index = frame.index.saturating_add(1);
        let frame = *frame;
        plan.b64 = frame.b64_children;
        if let Some(flavor) = frame.mask {
            plan.mask = Some(flavor);
            plan.role = Role::Plain;
            plan.fallback = Role::Plain;
            return;
        }
        match frame.role {
            Role::Items(item) => {
                plan.role = Role::Object {
                    kind: item.into(),
                    top: false,
                };
                // Paths of a body that only looked like a list (see `open`) go on inside.
                if frame.states.0 == frame.states.1 {
                    return;
                }
                plan.fallback = Role::Plain;
            }
            Role::Elements => {
                plan.role = Role::Object {
                    kind: Kind::Unresolved,
                    top: false,
                };
                return;
            }
            Role::Rows => {
                plan.role = Role::Row;
                return;
            }
            Role::Envelope | Role::Row => return,
            Role::Plain | Role::Object { .. } | Role::Meta | Role::Annotations => {
                plan.role = Role::Plain;
                plan.fallback = Role::Plain;
            }
        }
        let Some(p) = cx.profile else { return };
        for i in frame.states.0..frame.states.1 {
            match arena[i as usize] {
                Entry::Path { rule, seg } => {
                    let r = &p.rules[usize::from(rule)];
                    if r.segs[usize::from(seg)].matches_index(index) {
                        advance(p, arena, plan, rule, seg + 1);
                    }
                }
                Entry::Named { spec, .. } => arena.push(Entry::Named {
                    spec,
                    decision: Decision::Unknown,
                }),
                Entry::KeyMap { .. } => {}
            }
        }
    }

    /// Handles a value token with the plan made for it. May instead start a lookahead and
    /// leave the token to be read again once it is done.
    fn on_value(&mut self, cx: &mut Cx<'_>, tok: Token) -> Result<(), MaskError> {
        if let Some(flavor) = self.plan.pending_kind {
            let kind = match self.stack.last() {
                Some(Frame {
                    role: Role::Object { kind, .. },
                    ..
                }) => *kind,
                _ => Kind::Absent,
            };
            match is_secret(kind, self.forced_secret) {
                None => {
                    let top = matches!(
                        self.stack.last(),
                        Some(Frame {
                            role: Role::Object { top: true, .. },
                            ..
                        })
                    );
                    self.start_lookahead(tok, Goal::Kind { stop_at_lists: top });
                    return Ok(());
                }
                Some(secret) => {
                    if secret {
                        self.plan.mask = Some(flavor);
                    }
                    self.plan.pending_kind = None;
                }
            }
        }
        while let Some(&entry) = self.plan.pending_named.last() {
            match self.arena.get(entry as usize) {
                Some(Entry::Named {
                    decision: Decision::Unknown,
                    ..
                }) => {
                    self.start_lookahead(tok, Goal::Name { entry });
                    return Ok(());
                }
                Some(Entry::Named {
                    decision: Decision::Yes,
                    ..
                }) => self.plan.mask = Some(Flavor::Text),
                _ => {}
            }
            self.plan.pending_named.pop();
        }

        self.pos = tok.end;
        if let Some(parent) = self.stack.last_mut() {
            parent.expect = Expect::CommaOrEnd;
        }
        match tok.kind {
            Tok::ObjStart | Tok::ArrStart => {
                self.open(cx, tok.kind == Tok::ObjStart);
                return Ok(());
            }
            Tok::Str => self.on_string(cx, tok)?,
            Tok::Num => {
                if self.plan.mask.is_some() {
                    self.replace(cx, tok, b"0");
                }
            }
            Tok::True | Tok::False => {
                if self.plan.mask.is_some() {
                    self.replace(cx, tok, b"false");
                }
            }
            Tok::Null => {}
            _ => return Err(self.malformed(tok.start, "expected a value")),
        }
        // A scalar: its plan and any state made for it are done.
        self.arena.truncate(self.plan.states_from as usize);
        self.plan.ready = false;
        if self.stack.is_empty() {
            self.docs += 1;
        }
        Ok(())
    }

    fn start_lookahead(&mut self, tok: Token, goal: Goal) {
        self.lookahead = Some(Lookahead {
            goal,
            pos: tok.start,
            depth: 0,
            state: LaState::Value,
            hint: None,
        });
    }

    fn open(&mut self, cx: &mut Cx<'_>, obj: bool) {
        let plan = &self.plan;
        let start = plan.states_from as usize;
        let mut role = if plan.role.fits(obj) {
            plan.role
        } else {
            plan.fallback
        };
        if plan.mask.is_some() {
            self.arena.truncate(start);
            role = Role::Plain;
        } else {
            match role {
                Role::Object { .. } => {
                    // A fresh start for every profile path; states carried in are kept only
                    // for the items of a top-level body that had `items` before its `kind`
                    // (sorted keys): it may be a list, or an object with an `items` field, so
                    // both readings are masked.
                    if let Some(p) = cx.profile {
                        for rule in 0..p.rules.len() {
                            self.arena.push(Entry::Path {
                                rule: rule as u16,
                                seg: 0,
                            });
                        }
                    }
                }
                Role::Meta | Role::Annotations | Role::Plain | Role::Items(_) => {}
                Role::Envelope | Role::Rows | Role::Row | Role::Elements => {
                    self.arena.truncate(start);
                }
            }
        }
        if plan.mask.is_none()
            && matches!(role, Role::Plain | Role::Envelope)
            && self.arena.len() == start
            && !cx.profile.is_some_and(Profile::has_patterns)
        {
            self.skim_stack.clear();
            self.skim_stack.push(obj);
            self.skim_expect = if obj {
                Expect::KeyOrEnd
            } else {
                Expect::ValueOrEnd
            };
            self.skimming = true;
            self.plan.ready = false;
            return;
        }
        self.stack.push(Frame {
            obj,
            expect: if obj {
                Expect::KeyOrEnd
            } else {
                Expect::ValueOrEnd
            },
            role,
            mask: plan.mask,
            b64_children: plan.b64_children,
            states: (start as u32, self.arena.len() as u32),
            index: 0,
        });
        self.plan.ready = false;
    }

    fn close(&mut self, tok: Token) {
        self.pos = tok.end;
        if let Some(frame) = self.stack.pop() {
            self.arena.truncate(frame.states.0 as usize);
        }
        self.plan.ready = false;
        if self.stack.is_empty() {
            self.docs += 1;
        }
    }

    /// Writes the input up to `tok`, then `with` in its place.
    fn replace(&mut self, cx: &mut Cx<'_>, tok: Token, with: &[u8]) {
        cx.out.extend_from_slice(&self.buf[self.emitted..tok.start]);
        cx.out.extend_from_slice(with);
        self.emitted = tok.end;
        self.masked += 1;
    }

    fn on_string(&mut self, cx: &mut Cx<'_>, tok: Token) -> Result<(), MaskError> {
        let needs_text = self.plan.special != Special::None
            || !self.plan.captures.is_empty()
            || (self.plan.mask.is_none() && cx.profile.is_some_and(Profile::has_patterns));
        if !needs_text {
            if let Some(flavor) = self.plan.mask {
                self.mask_string(cx, tok, flavor);
            }
            return Ok(());
        }
        if self.plan.special == Special::None && self.plan.captures.is_empty() {
            // Only the patterns: look at the text in place; allocate only on a match.
            let Some(patterns) = cx.profile.and_then(|p| p.patterns.as_ref()) else {
                return Ok(());
            };
            let masked = {
                let text = lex::decode(&self.buf[tok.start..tok.end], tok.escaped)
                    .map_err(|reason| self.malformed(tok.start, reason))?;
                patterns.apply(&text)
            };
            if let Some(masked) = masked {
                self.put_masked_text(cx, tok, &masked);
            }
            return Ok(());
        }
        let text = lex::decode(&self.buf[tok.start..tok.end], tok.escaped)
            .map_err(|reason| self.malformed(tok.start, reason))?
            .into_owned();
        // Decisions that need the real value come before it is masked.
        if let Some(p) = cx.profile {
            for &i in &self.plan.captures {
                if let Some(Entry::Named { spec, decision }) = self.arena.get_mut(i as usize) {
                    let matched = p
                        .named
                        .get(usize::from(*spec))
                        .is_some_and(|n| n.matching.is_match(&text));
                    *decision = if matched { Decision::Yes } else { Decision::No };
                }
            }
        }
        if self.plan.special == Special::Kind
            && let Some(Frame {
                role: Role::Object { kind, .. },
                ..
            }) = self.stack.last_mut()
        {
            *kind = classify(&text);
        }
        if let Some(flavor) = self.plan.mask {
            self.mask_string(cx, tok, flavor);
            return Ok(());
        }
        if self.plan.special == Special::LastApplied {
            return self.on_last_applied(cx, tok, &text);
        }
        self.apply_patterns(cx, tok, &text)
    }

    fn mask_string(&mut self, cx: &mut Cx<'_>, tok: Token, flavor: Flavor) {
        let marker = if self.plan.b64 || flavor == Flavor::Base64 {
            MASKED_BASE64
        } else {
            MASKED_TEXT
        };
        let mut quoted = [0u8; 64];
        let n = marker.len() + 2;
        quoted[0] = b'"';
        quoted[1..n - 1].copy_from_slice(marker.as_bytes());
        quoted[n - 1] = b'"';
        self.replace(cx, tok, &quoted[..n]);
    }

    fn apply_patterns(&mut self, cx: &mut Cx<'_>, tok: Token, text: &str) -> Result<(), MaskError> {
        if let Some(masked) = cx
            .profile
            .and_then(|p| p.patterns.as_ref())
            .and_then(|p| p.apply(text))
        {
            self.put_masked_text(cx, tok, &masked);
        }
        Ok(())
    }

    /// Writes a string whose pattern matches were masked.
    fn put_masked_text(&mut self, cx: &mut Cx<'_>, tok: Token, masked: &str) {
        if self.plan.b64 {
            // Text spliced into base64 would no longer decode: mask the whole value.
            self.mask_string(cx, tok, Flavor::Base64);
            return;
        }
        let encoded = json_string(masked);
        self.replace(cx, tok, encoded.as_bytes());
    }

    /// The last-applied annotation holds the whole object as JSON text: mask inside it with a
    /// nested engine, so it stays valid JSON. If it is not JSON, a Secret's is masked whole and
    /// anything else gets the patterns.
    fn on_last_applied(
        &mut self,
        cx: &mut Cx<'_>,
        tok: Token,
        text: &str,
    ) -> Result<(), MaskError> {
        let kind = self
            .stack
            .iter()
            .rev()
            .find_map(|f| match f.role {
                Role::Object { kind, .. } => Some(kind),
                _ => None,
            })
            .unwrap_or(Kind::Absent);
        let outer_secret = is_secret(kind, self.forced_secret);
        if self.nesting < MAX_NESTING {
            let mut inner = Engine::new(outer_secret == Some(true), false);
            inner.nesting = self.nesting + 1;
            let mut out = BytesMut::with_capacity(text.len());
            let mut icx = Cx {
                profile: cx.profile,
                out: &mut out,
            };
            let done = inner
                .push(&mut icx, text.as_bytes())
                .and_then(|()| inner.finish(&mut icx));
            if done.is_ok() && inner.docs == 1 {
                if inner.masked == 0 {
                    return Ok(());
                }
                if let Ok(masked) = std::str::from_utf8(&out) {
                    let encoded = json_string(masked);
                    self.replace(cx, tok, encoded.as_bytes());
                    // `replace` counted one; the nested engine counted the fields.
                    self.masked += inner.masked - 1;
                    return Ok(());
                }
            }
        }
        if outer_secret != Some(false) {
            self.mask_string(cx, tok, Flavor::Text);
            return Ok(());
        }
        self.apply_patterns(cx, tok, text)
    }
}

/// Steps rule `rule` past one more matched segment.
fn advance(p: &Profile, arena: &mut Vec<Entry>, plan: &mut Plan, rule: u16, seg: u16) {
    let r = &p.rules[usize::from(rule)];
    if usize::from(seg) < r.segs.len() {
        arena.push(Entry::Path { rule, seg });
        return;
    }
    match r.action {
        Action::Mask => plan.mask = Some(Flavor::Text),
        Action::Keys(spec) => arena.push(Entry::KeyMap { spec }),
        Action::Named(spec) => arena.push(Entry::Named {
            spec,
            decision: Decision::Unknown,
        }),
    }
}

fn json_string(text: &str) -> String {
    // Serializing a str cannot fail; the fallback keeps this panic-free and still masked.
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{MASKED_TEXT}\""))
}
