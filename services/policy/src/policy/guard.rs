//! Guardrails: conditions on what an exec runs (`commands:`) and on what a write sends
//! (`body:`), beyond verb, resource and name.
//!
//! Both fail closed. When a guardrail cannot tell — no command (attach), a command line it
//! cannot see through (`$(...)`, inline interpreter code), a body that is not JSON — a deny or
//! approve rule counts that as a match and an allow rule as no match. So a policy never allows
//! more, or denies less, because Gatehouse could not read something.
//!
//! # Commands
//!
//! ```yaml
//! commands:
//!   - shell: true                  # any shell, or an interpreter given inline code
//!   - program: [sh, bash]          # globs on the programs the command runs
//!   - matching: "^rm$"             # regex on one argument…
//!     argument: 0
//!   - matching: "--privileged"     # …or on the whole command line (argv joined by spaces)
//! ```
//!
//! Entries are alternatives (any one matching is enough); the conditions inside one entry must
//! all hold. `program` and `shell` see through what a naive check of `argv[0]` misses:
//! - paths and case: `/bin/sh`, `/usr/bin/../bin/BASH` are `sh` and `bash`;
//! - wrappers: `env [-i] [VAR=x] sh`, `busybox sh`, `nice -n 5 bash`, `timeout 5 sh`,
//!   `sudo -u x sh`, `nohup`, `setsid`, `stdbuf`, `xargs`, `chroot`, `nsenter`, `find -exec`, …
//!   After a wrapper *every* later word counts as a program (so an option's value such as
//!   `5` in `nice -n 5` is one too): a deny rule sees more, an allow rule must list more;
//! - shell scripts: the script of `sh -c` / `bash -lc` / `su -c` / `eval` is split into its
//!   commands (`;`, `&&`, `|`, newlines, quotes removed so `s''h` is `sh`) and each is read the
//!   same way;
//! - interpreters given inline code or started bare (`python3 -c`, `perl -e`, `node -e`,
//!   `ruby`, `awk '…'`) count as shells, as do `su`, `script`, `sudo -s`, bare `chroot DIR` and
//!   bare `nsenter`;
//! - a command it cannot see through — `$(…)`, backticks, `$VAR` as a command, a shell
//!   running a script file or reading commands from a terminal or stdin, inline interpreter
//!   code — is *opaque*: deny and approve rules with `program` or `shell` match it, allow
//!   rules do not (so an allow rule cannot let an interactive shell through with `program:`;
//!   allow shells, if you must, with a rule that has no `commands:`).
//!
//! What a deny-list cannot catch: a renamed or copied shell binary, or a program that starts a
//! shell on its own (an editor's `:!sh`). Where that matters, allow the few commands a caller
//! needs (`action: allow` with `program: [...]`): an allow rule matches only if *every*
//! program in the command matches, and never an opaque one.
//!
//! # Body
//!
//! ```yaml
//! body:
//!   - kind: [RoleBinding, ClusterRoleBinding]   # globs on the object's kind
//!   - path: roleRef.name                         # dotted keys, `[*]` any element, `*` any key,
//!     matching: "^cluster-admin$"               # `["a.b/c"]` a key with dots
//! ```
//!
//! All conditions must hold. A path's value is tested as text (strings as they are, numbers
//! and booleans as JSON); objects and lists are not tested (reach their items with `.key` or
//! `[*]`). Where a path has several values (`[*]`), a deny or approve rule needs one to match,
//! an allow rule needs all of them to (and at least one). The body is read as JSON only when a
//! rule with a body guardrail is otherwise a match. Not readable, so failing closed:
//! protobuf of other kinds, YAML, JSON Patch (`application/json-patch+json`, a list of operations), anything
//! that is not a JSON object, a body that was not read; and a `kind` condition on a body
//! without `kind` (a merge patch). Protobuf bodies of the kinds [`super::protobuf`] knows
//! (RBAC roles and bindings, ConfigMaps, Secrets, ServiceAccounts, Namespaces) are read as
//! the JSON of the same object; other protobuf is not readable.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use super::matcher::Glob;

/// Regexes are compiled with a size limit so a policy cannot make matching slow.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("bad regex {pattern:?}: {}", one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// Commands

const SHELLS: [&str; 19] = [
    "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "pdksh", "oksh", "loksh", "yash", "fish",
    "csh", "tcsh", "rbash", "rc", "es", "su", "script",
];

/// Programs that run another program named by their arguments.
const WRAPPERS: [&str; 36] = [
    "env",
    "busybox",
    "toybox",
    "nice",
    "nohup",
    "timeout",
    "stdbuf",
    "setsid",
    "ionice",
    "taskset",
    "chroot",
    "sudo",
    "doas",
    "xargs",
    "time",
    "unshare",
    "nsenter",
    "chrt",
    "flock",
    "watch",
    "strace",
    "ltrace",
    "runuser",
    "su-exec",
    "gosu",
    "tini",
    "dumb-init",
    "catatonit",
    "exec",
    "command",
    "builtin",
    "find",
    "parallel",
    "setpriv",
    "capsh",
    "systemd-run",
];

/// Wrappers that start a shell when given no command.
const SHELL_WHEN_BARE: [&str; 3] = ["chroot", "nsenter", "unshare"];

/// Interpreters, with or without a version suffix (`python3.12`, `perl5.36`).
const INTERPRETERS: [&str; 21] = [
    "python",
    "perl",
    "ruby",
    "irb",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "expect",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "pwsh",
    "powershell",
    "jshell",
];

/// Flags that give an interpreter its code inline (or make it interactive).
const INLINE_CODE_FLAGS: [&str; 10] = [
    "-c",
    "-e",
    "-E",
    "-r",
    "-i",
    "-",
    "--eval",
    "--exec",
    "--command",
    "-Command",
];

const MAX_DEPTH: usize = 8;
const MAX_WORDS: usize = 512;
const MAX_SCRIPT: usize = 64 * 1024;

/// What a command line runs, as far as Gatehouse can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandAnalysis {
    /// Every program the command may run, lower-case base names, in order.
    pub programs: Vec<String>,
    /// A shell, or an interpreter with inline code, is among them.
    pub shell: bool,
    /// Something could not be seen through (fails closed).
    pub opaque: bool,
}

/// Reads a command line (`argv`) the way the guardrail does.
pub fn analyze_command(argv: &[String]) -> CommandAnalysis {
    let mut out = CommandAnalysis::default();
    if argv.len() > MAX_WORDS {
        out.opaque = true;
    }
    let words: Vec<&str> = argv.iter().take(MAX_WORDS).map(String::as_str).collect();
    walk(&words, 0, &mut out);
    out
}

fn basename(word: &str) -> String {
    word.rsplit('/').next().unwrap_or(word).to_ascii_lowercase()
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    }
}

fn is_shell(program: &str) -> bool {
    SHELLS.contains(&program)
}

fn is_wrapper(program: &str) -> bool {
    WRAPPERS.contains(&program)
}

fn is_interpreter(program: &str) -> bool {
    INTERPRETERS.iter().any(|base| {
        program
            .strip_prefix(base)
            .is_some_and(|version| version.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    })
}

fn walk(words: &[&str], depth: usize, out: &mut CommandAnalysis) {
    if depth > MAX_DEPTH {
        out.opaque = true;
        return;
    }
    let Some(start) = words.iter().position(|w| !is_assignment(w)) else {
        return;
    };
    let (word, args) = (words[start], &words[start + 1..]);
    if word.contains('$') || word.contains('`') {
        out.opaque = true;
        return;
    }
    let program = basename(word);
    if program.is_empty() {
        out.opaque = true;
        return;
    }
    out.programs.push(program.clone());
    if is_shell(&program) {
        out.shell = true;
        shell_arguments(args, depth, out);
    } else if program == "eval" {
        script(&args.join(" "), depth, out);
    } else if is_interpreter(&program) {
        let bare = args.iter().all(|a| a.starts_with('-'));
        let awk = program.ends_with("awk");
        if bare || awk || args.iter().any(|a| INLINE_CODE_FLAGS.contains(a)) {
            out.shell = true;
            out.opaque = true;
        }
    } else if is_wrapper(&program) {
        wrapped(&program, args, depth, out);
    }
}

/// `sh -c SCRIPT`, `bash -lc SCRIPT`, `sh FILE`, `sh` (interactive).
fn shell_arguments(args: &[&str], depth: usize, out: &mut CommandAnalysis) {
    let mut expecting_script = false;
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if expecting_script {
            script(arg, depth, out);
            return;
        }
        if *arg == "--" {
            continue;
        }
        if matches!(*arg, "-o" | "-O" | "+o" | "+O" | "--rcfile" | "--init-file") {
            skip_value = true;
            continue;
        }
        if let Some(flags) = arg.strip_prefix('-') {
            if !flags.starts_with('-') && flags.contains('c') {
                expecting_script = true;
            }
            continue;
        }
        if arg.starts_with('+') {
            continue;
        }
        // A script file (or, for `su`, a user name): what it runs cannot be seen from here.
        out.opaque = true;
        return;
    }
    // `sh -c` with nothing after it, or a shell reading commands from a terminal or stdin:
    // anything may run.
    out.opaque = true;
}

/// After a wrapper every word counts as a program; the first shell, interpreter or wrapper
/// among them is read as a command of its own.
fn wrapped(program: &str, args: &[&str], depth: usize, out: &mut CommandAnalysis) {
    let mut commands = 0usize;
    let mut skip_value = false;
    for (i, arg) in args.iter().enumerate() {
        if skip_value {
            skip_value = false;
            continue;
        }
        if arg.starts_with('-') || arg.starts_with('+') || is_assignment(arg) {
            if program == "sudo" && matches!(*arg, "-s" | "-i" | "--shell" | "--login") {
                out.shell = true;
                out.opaque = true;
            }
            // `env -S "sh -c x"` / `env --split-string=...`: a command line in one word.
            if program == "env" {
                if let Some(line) = arg.strip_prefix("--split-string=") {
                    script(line, depth + 1, out);
                } else if *arg == "-S" || *arg == "--split-string" {
                    if let Some(line) = args.get(i + 1) {
                        script(line, depth + 1, out);
                    }
                    skip_value = true;
                }
            }
            continue;
        }
        if arg.contains('$') || arg.contains('`') {
            out.opaque = true;
            continue;
        }
        // Numbers are option values (`nice -n 5`, `nsenter -t 1`), never programs.
        if arg.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        commands += 1;
        let name = basename(arg);
        if is_shell(&name) || is_wrapper(&name) || is_interpreter(&name) || name == "eval" {
            walk(&args[i..], depth + 1, out);
            return;
        }
        if !name.is_empty() {
            out.programs.push(name);
        }
    }
    let bare = match program {
        "chroot" => commands <= 1,
        p => SHELL_WHEN_BARE.contains(&p) && commands == 0,
    };
    if bare {
        out.shell = true;
        out.opaque = true;
    }
}

/// A shell script: split into simple commands, each read as a command line.
fn script(text: &str, depth: usize, out: &mut CommandAnalysis) {
    if text.len() > MAX_SCRIPT {
        out.opaque = true;
        return;
    }
    if text.contains('`') || text.contains("$(") || text.contains("<(") || text.contains(">(") {
        out.opaque = true;
    }
    for command in split_script(text) {
        let words: Vec<&str> = command
            .iter()
            .map(String::as_str)
            .skip_while(|w| SHELL_KEYWORDS.contains(w))
            .collect();
        let words = without_redirections(&words);
        walk(&words, depth + 1, out);
    }
}

const SHELL_KEYWORDS: [&str; 14] = [
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "case", "esac", "!",
    "in",
];

fn without_redirections<'a>(words: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(words.len());
    let mut skip_next = false;
    for w in words {
        if skip_next {
            skip_next = false;
            continue;
        }
        let bare = w.trim_start_matches(|c: char| c.is_ascii_digit() || c == '&');
        if bare.starts_with('>') || bare.starts_with('<') {
            // `> file` takes the next word; `>file` and `2>&1` do not.
            skip_next = bare.trim_start_matches(['>', '<', '&', '|']).is_empty();
            continue;
        }
        out.push(*w);
    }
    out
}

/// Splits a script into simple commands of words, with quotes removed (`s''h` is `sh`).
fn split_script(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    let finish_word = |word: &mut String, in_word: &mut bool, words: &mut Vec<String>| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next()
                    && n != '\n'
                {
                    word.push(n);
                }
            }
            ';' | '&' | '|' | '\n' | '(' | ')' | '{' | '}' => {
                finish_word(&mut word, &mut in_word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            '#' if !in_word => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                finish_word(&mut word, &mut in_word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => finish_word(&mut word, &mut in_word, &mut words),
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    finish_word(&mut word, &mut in_word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

/// A compiled `commands:` guardrail.
#[derive(Debug)]
pub struct CommandGuard {
    entries: Vec<CommandEntry>,
}

#[derive(Debug)]
pub(crate) struct CommandEntry {
    pub program: Option<Vec<(String, Glob)>>,
    pub shell: bool,
    pub matching: Option<(String, Regex)>,
    pub argument: Option<usize>,
}

impl CommandGuard {
    pub(crate) fn new(entries: Vec<CommandEntry>) -> Self {
        Self { entries }
    }

    /// Whether the guardrail matches; `restricts` is true for deny and approve rules.
    pub fn matches(&self, restricts: bool, argv: &[String], analysis: &CommandAnalysis) -> bool {
        if argv.is_empty() {
            return restricts;
        }
        self.entries
            .iter()
            .any(|e| e.matches(restricts, argv, analysis).is_ok())
    }

    /// One sentence per entry saying why it did or did not match.
    pub fn explain(&self, restricts: bool, argv: &[String], analysis: &CommandAnalysis) -> String {
        if argv.is_empty() {
            return if restricts {
                "the request has no command (attach, or exec without one); a deny or approve \
                 rule's command guardrail counts that as a match (fails closed)"
                    .into()
            } else {
                "the request has no command (attach, or exec without one); an allow rule's \
                 command guardrail never matches that (fails closed)"
                    .into()
            };
        }
        let mut reasons = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            match e.matches(restricts, argv, analysis) {
                Ok(why) => return format!("commands[{i}] matches: {why}"),
                Err(why) => reasons.push(format!("commands[{i}]: {why}")),
            }
        }
        format!(
            "no commands entry matches (programs run: {}{}): {}",
            analysis.programs.join(", "),
            if analysis.opaque { "; opaque" } else { "" },
            reasons.join("; ")
        )
    }
}

impl CommandEntry {
    fn matches(
        &self,
        restricts: bool,
        argv: &[String],
        analysis: &CommandAnalysis,
    ) -> Result<String, String> {
        let mut why = Vec::new();
        if let Some(globs) = &self.program {
            let listed = |p: &String| globs.iter().any(|(_, g)| g.matches(p));
            let names = || {
                globs
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if restricts {
                if analysis.opaque {
                    why.push("the command is opaque, so it may run a listed program".to_owned());
                } else if let Some(p) = analysis.programs.iter().find(|p| listed(p)) {
                    why.push(format!("it runs {p}, listed in program [{}]", names()));
                } else {
                    return Err(format!("runs none of [{}]", names()));
                }
            } else if analysis.opaque {
                return Err(
                    "the command is opaque; an allow rule needs to see every program".to_owned(),
                );
            } else if analysis.programs.is_empty() {
                return Err("it runs no program that can be seen".to_owned());
            } else if let Some(p) = analysis.programs.iter().find(|p| !listed(p)) {
                return Err(format!("it runs {p}, not listed in program [{}]", names()));
            } else {
                why.push(format!("every program it runs is in [{}]", names()));
            }
        }
        if self.shell {
            if restricts {
                if analysis.shell {
                    why.push("it runs a shell".to_owned());
                } else if analysis.opaque {
                    why.push("the command is opaque, so it may run a shell".to_owned());
                } else {
                    return Err("runs no shell".to_owned());
                }
            } else if analysis.shell && !analysis.opaque {
                why.push("it runs a shell".to_owned());
            } else {
                return Err("an allow rule with shell: true needs a visible shell".to_owned());
            }
        }
        if let Some((source, regex)) = &self.matching {
            let hit = match self.argument {
                Some(n) => argv.get(n).is_some_and(|a| regex.is_match(a)),
                None => regex.is_match(&argv.join(" ")),
            };
            let target = match self.argument {
                Some(n) => format!("argument {n}"),
                None => "the command line".to_owned(),
            };
            if hit {
                why.push(format!("{target} matches {source:?}"));
            } else {
                return Err(format!("{target} does not match {source:?}"));
            }
        }
        Ok(why.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// Body

/// One step of a body path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    /// `*`: every value of an object (and every element of a list).
    AnyKey,
    Index(usize),
    /// `[*]`: every element of a list (and every value of an object).
    AnyIndex,
}

/// Parses `roleRef.name`, `spec.containers[*].image`, `metadata.annotations["a.b/c"]`.
pub fn parse_body_path(path: &str) -> Result<Vec<PathSegment>, String> {
    let bad = |why: &str| Err(format!("bad path {path:?}: {why}"));
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    let mut key = String::new();
    let mut expect_key = true;
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if expect_key && key.is_empty() {
                    return bad("empty key");
                }
                if !key.is_empty() {
                    out.push(key_segment(std::mem::take(&mut key)));
                }
                expect_key = true;
            }
            '[' => {
                if !key.is_empty() {
                    out.push(key_segment(std::mem::take(&mut key)));
                }
                let mut inner = String::new();
                let mut closed = false;
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut quoted_closed = false;
                    for c in chars.by_ref() {
                        if c == '"' {
                            quoted_closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !quoted_closed || chars.next() != Some(']') {
                        return bad("a quoted key must look like [\"key\"]");
                    }
                    out.push(PathSegment::Key(inner));
                    expect_key = false;
                    continue;
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    return bad("unclosed [");
                }
                if inner == "*" {
                    out.push(PathSegment::AnyIndex);
                } else if let Ok(n) = inner.parse::<usize>() {
                    out.push(PathSegment::Index(n));
                } else {
                    return bad("inside [ ] use *, a number, or a quoted key");
                }
                expect_key = false;
            }
            c => {
                key.push(c);
                expect_key = false;
            }
        }
    }
    if !key.is_empty() {
        out.push(key_segment(key));
    } else if expect_key {
        return bad("empty key");
    }
    Ok(out)
}

fn key_segment(key: String) -> PathSegment {
    if key == "*" {
        PathSegment::AnyKey
    } else {
        PathSegment::Key(key)
    }
}

const MAX_VALUES: usize = 10_000;

fn collect<'v>(value: &'v Value, path: &[PathSegment], out: &mut Vec<&'v Value>) {
    if out.len() >= MAX_VALUES {
        return;
    }
    let Some((first, rest)) = path.split_first() else {
        out.push(value);
        return;
    };
    match (first, value) {
        (PathSegment::Key(k), Value::Object(map)) => {
            if let Some(v) = map.get(k) {
                collect(v, rest, out);
            }
        }
        (PathSegment::Index(n), Value::Array(items)) => {
            if let Some(v) = items.get(*n) {
                collect(v, rest, out);
            }
        }
        (PathSegment::AnyKey | PathSegment::AnyIndex, Value::Object(map)) => {
            for v in map.values() {
                collect(v, rest, out);
            }
        }
        (PathSegment::AnyKey | PathSegment::AnyIndex, Value::Array(items)) => {
            for v in items {
                collect(v, rest, out);
            }
        }
        _ => {}
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The request body as the body guardrail sees it, read at most once per decision.
#[derive(Debug)]
pub enum BodyView {
    Json(Value),
    /// Why it could not be read.
    Unreadable(String),
}

/// Reads a request body for the body guardrail.
pub fn read_body(body: Option<&[u8]>, content_type: Option<&str>) -> BodyView {
    let Some(body) = body else {
        return BodyView::Unreadable("the request body was not read".into());
    };
    let media = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if media.contains("protobuf") {
        return match super::protobuf::decode(body) {
            Ok(value) => BodyView::Json(value),
            Err(why) => BodyView::Unreadable(why),
        };
    }
    if media == "application/json-patch+json" {
        return BodyView::Unreadable(
            "the body is a JSON Patch (a list of operations), not an object".into(),
        );
    }
    if body.is_empty() {
        return BodyView::Unreadable("the body is empty".into());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => BodyView::Json(value),
        Ok(_) => BodyView::Unreadable("the body is JSON but not an object".into()),
        Err(_) if media.contains("yaml") => BodyView::Unreadable("the body is YAML".into()),
        Err(_) => BodyView::Unreadable("the body is not JSON".into()),
    }
}

/// A compiled `body:` guardrail.
#[derive(Debug)]
pub struct BodyGuard {
    conditions: Vec<BodyCondition>,
}

#[derive(Debug)]
pub(crate) enum BodyCondition {
    Kind(Vec<(String, Glob)>),
    Path {
        source: String,
        path: Vec<PathSegment>,
        matching: (String, Regex),
    },
}

impl BodyGuard {
    pub(crate) fn new(conditions: Vec<BodyCondition>) -> Self {
        Self { conditions }
    }

    pub fn matches(&self, restricts: bool, body: &BodyView) -> bool {
        match body {
            BodyView::Unreadable(_) => restricts,
            BodyView::Json(v) => self
                .conditions
                .iter()
                .all(|c| c.evaluate(restricts, v).is_ok()),
        }
    }

    pub fn explain(&self, restricts: bool, body: &BodyView) -> String {
        match body {
            BodyView::Unreadable(why) if restricts => format!(
                "{why}; a deny or approve rule's body guardrail counts an unreadable body as a \
                 match (fails closed)"
            ),
            BodyView::Unreadable(why) => format!(
                "{why}; an allow rule's body guardrail never matches an unreadable body (fails \
                 closed)"
            ),
            BodyView::Json(v) => {
                let mut held = Vec::new();
                for (i, c) in self.conditions.iter().enumerate() {
                    match c.evaluate(restricts, v) {
                        Ok(why) => held.push(format!("body[{i}]: {why}")),
                        Err(why) => return format!("body[{i}] does not hold: {why}"),
                    }
                }
                format!("every body condition holds: {}", held.join("; "))
            }
        }
    }
}

impl BodyCondition {
    fn evaluate(&self, restricts: bool, body: &Value) -> Result<String, String> {
        match self {
            BodyCondition::Kind(globs) => {
                let names = globs
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                match body.get("kind").and_then(Value::as_str) {
                    Some(kind) if globs.iter().any(|(_, g)| g.matches(kind)) => {
                        Ok(format!("kind {kind} is in [{names}]"))
                    }
                    Some(kind) => Err(format!("kind {kind} is not in [{names}]")),
                    None if restricts => Ok(format!(
                        "the body has no kind, so it may be one of [{names}] (fails closed)"
                    )),
                    None => Err("the body has no kind (fails closed for allow rules)".into()),
                }
            }
            BodyCondition::Path {
                source,
                path,
                matching: (pattern, regex),
            } => {
                let mut values = Vec::new();
                collect(body, path, &mut values);
                if values.is_empty() {
                    return Err(format!("nothing at {source}"));
                }
                let texts: Vec<Option<String>> = values.iter().map(|v| scalar_text(v)).collect();
                let hit = |t: &Option<String>| t.as_deref().is_some_and(|t| regex.is_match(t));
                if restricts {
                    match texts.iter().flatten().find(|t| regex.is_match(t)) {
                        Some(t) => Ok(format!("{source} = {t:?} matches {pattern:?}")),
                        None => Err(format!("no value at {source} matches {pattern:?}")),
                    }
                } else if texts.iter().all(hit) {
                    Ok(format!(
                        "every value at {source} ({}) matches {pattern:?}",
                        texts.len()
                    ))
                } else {
                    Err(format!(
                        "a value at {source} does not match {pattern:?} (an allow rule needs \
                         all to)"
                    ))
                }
            }
        }
    }
}

/// A body read lazily: JSON is parsed only when a rule with a body guardrail needs it.
#[derive(Debug)]
pub(crate) struct LazyBody<'a> {
    body: Option<&'a [u8]>,
    content_type: Option<&'a str>,
    view: OnceLock<BodyView>,
}

impl<'a> LazyBody<'a> {
    pub fn new(body: Option<&'a [u8]>, content_type: Option<&'a str>) -> Self {
        Self {
            body,
            content_type,
            view: OnceLock::new(),
        }
    }

    pub fn get(&self) -> &BodyView {
        self.view
            .get_or_init(|| read_body(self.body, self.content_type))
    }

    pub fn was_read(&self) -> bool {
        self.view.get().is_some()
    }
}

/// A command read lazily, for the same reason.
#[derive(Debug)]
pub(crate) struct LazyCommand<'a> {
    argv: &'a [String],
    analysis: OnceLock<CommandAnalysis>,
}

impl<'a> LazyCommand<'a> {
    pub fn new(argv: &'a [String]) -> Self {
        Self {
            argv,
            analysis: OnceLock::new(),
        }
    }

    pub fn argv(&self) -> &'a [String] {
        self.argv
    }

    pub fn analysis(&self) -> &CommandAnalysis {
        self.analysis.get_or_init(|| analyze_command(self.argv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn analysis(words: &[&str]) -> CommandAnalysis {
        analyze_command(&argv(words))
    }

    #[test]
    fn shells_are_seen_through_paths_wrappers_and_scripts() {
        for words in [
            &["sh"][..],
            &["/bin/sh"],
            &["/usr/bin/../bin/BASH", "-i"],
            &["sh", "-c", "ls"],
            &["bash", "-lc", "echo hi"],
            &["env", "sh"],
            &["env", "-i", "PATH=/bin", "sh"],
            &["/usr/bin/env", "-u", "HOME", "bash"],
            &["busybox", "sh"],
            &["busybox", "ash"],
            &["nice", "-n", "5", "bash"],
            &["timeout", "5", "sh"],
            &["sudo", "-u", "root", "zsh"],
            &["sudo", "-s"],
            &["su"],
            &["su", "-c", "id"],
            &["chroot", "/host"],
            &["nsenter", "-t", "1", "-m"],
            &["python3", "-c", "import pty; pty.spawn('/bin/sh')"],
            &["perl", "-e", "exec '/bin/sh'"],
            &["python"],
            &["find", ".", "-exec", "sh", "{}", ";"],
            &["xargs", "sh"],
            &["env", "-S", "sh -c id"],
        ] {
            let a = analysis(words);
            assert!(a.shell, "{words:?} → {a:?}");
        }
        for words in [
            &["ls", "-la"][..],
            &["cat", "/etc/sh"],
            &["grep", "sh", "file"],
            &["python3", "manage.py", "migrate"],
            &["env"],
            &["nginx", "-s", "reload"],
        ] {
            let a = analysis(words);
            assert!(!a.shell, "{words:?} → {a:?}");
        }
    }

    #[test]
    fn scripts_are_split_into_their_commands() {
        let a = analysis(&[
            "sh",
            "-c",
            "cd /tmp && s''h -c id; echo \"done\" | tee x > /dev/null",
        ]);
        assert_eq!(a.programs, ["sh", "cd", "sh", "id", "echo", "tee"]);
        assert!(!a.opaque);
        // A nested shell reading stdin may run anything.
        assert!(analysis(&["sh", "-c", "cd /tmp && s''h"]).opaque);
        let a = analysis(&["sh", "-c", "if true; then rm -rf /data; fi"]);
        assert!(a.programs.contains(&"rm".to_owned()), "{a:?}");
        let a = analysis(&["bash", "-c", "X=rm; $X -rf /"]);
        assert!(a.opaque, "{a:?}");
        let a = analysis(&["sh", "-c", "echo $(id)"]);
        assert!(a.opaque, "{a:?}");
        let a = analysis(&["sh", "/tmp/script.sh"]);
        assert!(a.opaque, "{a:?}");
        let a = analysis(&["bash", "-o", "pipefail", "-c", "ls | wc -l"]);
        assert_eq!(a.programs, ["bash", "ls", "wc"]);
        assert!(!a.opaque, "{a:?}");
        let a = analysis(&["bash"]);
        assert!(
            a.shell && a.opaque,
            "an interactive shell may run anything: {a:?}"
        );
        let a = analysis(&["A=1"]);
        assert!(a.programs.is_empty(), "{a:?}");
        let a = analysis(&["eval", "rm", "-rf", "/"]);
        assert!(a.programs.contains(&"rm".to_owned()), "{a:?}");
    }

    #[test]
    fn odd_command_lines_do_not_panic_and_deep_nesting_is_opaque() {
        for words in [
            &[""][..],
            &["/"],
            &["sh", "-c", "'unterminated"],
            &["sh", "-c", "\\"],
            &["sh", "-c", "\"x"],
            &["sh", "-c", "ä; ö | 🐚"],
            &["sh", "-c", ">"],
            &["env", "-S"],
            &["sudo", "--", "$"],
        ] {
            analyze_command(&argv(words));
        }
        let mut nested = vec!["env"; 20];
        nested.push("ls");
        assert!(analysis(&nested).opaque);
        let deep = (0..20).fold("ls".to_owned(), |inner, _| format!("sh -c {inner:?}"));
        assert!(analysis(&["sh", "-c", &deep]).opaque);
    }

    fn guard(entries: Vec<CommandEntry>) -> CommandGuard {
        CommandGuard::new(entries)
    }

    fn program(globs: &[&str]) -> CommandEntry {
        CommandEntry {
            program: Some(
                globs
                    .iter()
                    .map(|g| (g.to_string(), Glob::new(g)))
                    .collect(),
            ),
            shell: false,
            matching: None,
            argument: None,
        }
    }

    fn check(g: &CommandGuard, restricts: bool, words: &[&str]) -> bool {
        let argv = argv(words);
        g.matches(restricts, &argv, &analyze_command(&argv))
    }

    #[test]
    fn deny_lists_fail_closed_and_allow_lists_need_every_program() {
        let deny_sh = guard(vec![program(&["sh", "bash"])]);
        assert!(check(&deny_sh, true, &["env", "sh"]));
        assert!(check(&deny_sh, true, &["sh", "-c", "echo $(id)"]));
        assert!(check(&deny_sh, true, &[]), "no command fails closed");
        assert!(!check(&deny_sh, true, &["ls"]));

        let allow_ls = guard(vec![program(&["ls", "cat"])]);
        assert!(check(&allow_ls, false, &["ls", "-la"]));
        assert!(!check(&allow_ls, false, &["sh", "-c", "ls"]));
        assert!(!check(&allow_ls, false, &["env", "ls"]));
        assert!(!check(&allow_ls, false, &[]));
        assert!(!check(&allow_ls, false, &["A=1"]), "no visible program");
        let deny_rm = guard(vec![program(&["rm"])]);
        assert!(
            check(&deny_rm, true, &["bash"]),
            "an interactive shell may run rm"
        );
        assert!(check(&deny_rm, true, &["sh", "-c", "cd /; rm -rf x"]));
        assert!(!check(&deny_rm, true, &["sh", "-c", "ls"]));

        let arg0 = guard(vec![CommandEntry {
            program: None,
            shell: false,
            matching: Some(("^(sh|bash)$".into(), compile_regex("^(sh|bash)$").unwrap())),
            argument: Some(0),
        }]);
        assert!(check(&arg0, true, &["sh"]));
        assert!(
            !check(&arg0, true, &["/bin/sh"]),
            "a plain regex sees the raw argument"
        );
    }

    fn body_guard(conditions: Vec<BodyCondition>) -> BodyGuard {
        BodyGuard::new(conditions)
    }

    fn path(source: &str, pattern: &str) -> BodyCondition {
        BodyCondition::Path {
            source: source.into(),
            path: parse_body_path(source).unwrap(),
            matching: (pattern.into(), compile_regex(pattern).unwrap()),
        }
    }

    fn body(json: &str, content_type: &str) -> BodyView {
        read_body(Some(json.as_bytes()), Some(content_type))
    }

    #[test]
    fn body_conditions() {
        let g = body_guard(vec![
            BodyCondition::Kind(vec![("*RoleBinding".into(), Glob::new("*RoleBinding"))]),
            path("roleRef.name", "^cluster-admin$"),
        ]);
        let admin = r#"{"kind":"RoleBinding","roleRef":{"name":"cluster-admin"}}"#;
        let view = r#"{"kind":"RoleBinding","roleRef":{"name":"view"}}"#;
        assert!(g.matches(true, &body(admin, "application/json")));
        assert!(!g.matches(true, &body(view, "application/json")));
        // A merge patch without kind: a deny rule fails closed, an allow rule does not match.
        let patch = r#"{"roleRef":{"name":"cluster-admin"}}"#;
        assert!(g.matches(true, &body(patch, "application/merge-patch+json")));
        assert!(!g.matches(false, &body(patch, "application/merge-patch+json")));
        // Unreadable bodies.
        for (b, ct) in [
            ("kind: RoleBinding", "application/yaml"),
            ("\u{0}k8s\u{0}", "application/vnd.kubernetes.protobuf"),
            (
                r#"[{"op":"replace","path":"/roleRef/name","value":"cluster-admin"}]"#,
                "application/json-patch+json",
            ),
            ("", "application/json"),
        ] {
            let v = body(b, ct);
            assert!(matches!(v, BodyView::Unreadable(_)), "{ct}");
            assert!(g.matches(true, &v));
            assert!(!g.matches(false, &v));
        }
        assert!(g.matches(true, &read_body(None, None)));
    }

    #[test]
    fn multi_valued_paths_any_for_deny_all_for_allow() {
        let g = body_guard(vec![path(
            "spec.containers[*].image",
            "^registry\\.internal/",
        )]);
        let mixed =
            r#"{"spec":{"containers":[{"image":"registry.internal/a"},{"image":"docker.io/b"}]}}"#;
        let internal = r#"{"spec":{"containers":[{"image":"registry.internal/a"}]}}"#;
        assert!(g.matches(true, &body(mixed, "application/json")));
        assert!(!g.matches(false, &body(mixed, "application/json")));
        assert!(g.matches(false, &body(internal, "application/json")));
        assert!(!g.matches(false, &body(r#"{"spec":{}}"#, "application/json")));
    }

    #[test]
    fn body_paths_parse() {
        use PathSegment::*;
        assert_eq!(
            parse_body_path("spec.containers[*].image").unwrap(),
            vec![
                Key("spec".into()),
                Key("containers".into()),
                AnyIndex,
                Key("image".into())
            ]
        );
        assert_eq!(
            parse_body_path("metadata.annotations[\"a.b/c\"]").unwrap(),
            vec![
                Key("metadata".into()),
                Key("annotations".into()),
                Key("a.b/c".into())
            ]
        );
        assert_eq!(
            parse_body_path("data.*").unwrap(),
            vec![Key("data".into()), AnyKey]
        );
        assert_eq!(
            parse_body_path("items[2]").unwrap(),
            vec![Key("items".into()), Index(2)]
        );
        for bad in ["", "a..b", "a[", "a[x]", "a.", "a[\"x\"", ".a"] {
            assert!(parse_body_path(bad).is_err(), "{bad:?}");
        }
    }
}
