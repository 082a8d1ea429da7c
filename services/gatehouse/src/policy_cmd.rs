//! `gatehouse policy check` and `gatehouse policy explain`: the policy file, offline.
//!
//! `check` prints what would stop the proxy from loading a policy, or, for one that loads, the
//! lint findings; `explain` builds the request a kubectl command would make and walks the rules
//! for it, with the same code the proxy decides with.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gatehouse_events::{Identity, RequestInfo};
use gatehouse_proxy::policy::{self, Finding, Policy, PolicyInput, Severity};

/// The policy file, offline.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file: the problems that stop it from loading, or lint findings.
    #[command(after_help = "\
Findings are printed as FILE:LINE:COLUMN: SEVERITY[CODE]: MESSAGE.

Exit status:
  0  the policy loads; no findings, or warnings and info only
  1  the policy loads, but lint found errors (a rule that can never match, a rule as broad
     as cluster-admin)
  2  the file cannot be read or parsed, or the proxy would refuse to load it (YAML syntax,
     unknown field, bad verb, bad regex, unknown mask profile, duplicate id, ...)")]
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Say which rule decides a request, and why each rule before it did not match.
    #[command(after_help = "\
RESOURCE is how kubectl names it: pods, pods/log, pods/exec, deployments.apps,
deployments.apps/scale, rolebindings.rbac.authorization.k8s.io; or a non-resource URL such as
/version (then VERB is the HTTP method: get, post, ...). For exec, attach and portforward the
subresource may be left out: `exec pods web`.

Examples:
  gatehouse policy explain --policy policy.yaml --as ci-deployer list secrets -n prod
  gatehouse policy explain --policy policy.yaml --as dev --group debuggers \\
      exec pods web -n apps --command sh -c 'id'
  gatehouse policy explain --policy policy.yaml --as ci-deployer \\
      create rolebindings.rbac.authorization.k8s.io -n apps --body binding.yaml

Exit status: 0 when the request was explained (whatever the decision), 2 when the policy,
registry or body cannot be read or loaded, or the request is malformed.")]
    Explain(Box<ExplainArgs>),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The principal making the request.
    #[arg(long = "as", value_name = "PRINCIPAL")]
    principal: String,
    /// A group of the caller (repeat for several); added to the registry's.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The identity registry the proxy uses: adds the principal's groups, and an identity not
    /// in it gets the proxy's answer for unknown identities. Default: `identities.yaml` beside
    /// the policy; without one, explain refuses (unless --no-registry).
    #[arg(long, value_name = "REGISTRY_FILE", conflicts_with = "no_registry")]
    identities: Option<PathBuf>,
    /// Explain for a caller with only the --group groups given, as if registered, without a
    /// registry (the proxy itself always has one).
    #[arg(long)]
    no_registry: bool,
    /// get, list, watch, create, update, patch, delete, deletecollection, exec, attach,
    /// portforward, proxy (or an HTTP method for a non-resource URL).
    verb: String,
    /// pods, pods/exec, deployments.apps, rolebindings.rbac.authorization.k8s.io, /version …
    resource: String,
    /// The object's name (omit for list, watch, create).
    name: Option<String>,
    /// The namespace (omit for cluster-scoped resources).
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// The exec command and its arguments, as after `kubectl exec POD --`. Takes every
    /// argument after it, so give it last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARG")]
    command: Vec<String>,
    /// The request body (JSON, or YAML, sent as the JSON kubectl would send).
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// Send the body as is with this content type (e.g. application/merge-patch+json).
    #[arg(long, value_name = "TYPE")]
    content_type: Option<String>,
}

/// Runs a `gatehouse policy` command; `Err` is an unreadable input (exit 2).
pub fn run(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Explain(args) => explain(*args),
    }
}

fn print_finding(file: &Path, f: &Finding) {
    let at = match f.location {
        Some(l) => format!("{}:{}:{}", file.display(), l.line, l.column),
        None => file.display().to_string(),
    };
    println!("{at}: {}[{}]: {}", f.severity, f.code, f.message);
}

fn check(file: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read policy {}", file.display()))?;
    let policy = match Policy::from_yaml(&text) {
        Ok(policy) => policy,
        Err(e) => {
            for problem in &e.problems {
                print_finding(file, &Finding::from_problem(problem));
            }
            println!(
                "{}: refused: {} problem{}; the proxy would not load this policy",
                file.display(),
                e.problems.len(),
                if e.problems.len() == 1 { "" } else { "s" }
            );
            return Ok(ExitCode::from(2));
        }
    };
    let findings = policy::lint(&policy);
    for f in &findings {
        print_finding(file, f);
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, infos) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
    );
    println!(
        "{}: {} rule{}, {} mask profile{}; {errors} error{}, {warnings} warning{}, {infos} info",
        file.display(),
        policy.rules().len(),
        plural(policy.rules().len()),
        policy.mask_profiles().len(),
        plural(policy.mask_profiles().len()),
        plural(errors),
        plural(warnings),
    );
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

const STREAMING: [&str; 4] = ["exec", "attach", "portforward", "proxy"];

/// The request info the proxy's own parser produces for this kubectl-style request: the
/// method and path kubectl would send, parsed as the proxy parses them.
fn request_info(args: &ExplainArgs) -> Result<(RequestInfo, Vec<String>)> {
    let mut notes = Vec::new();
    let mut verb = args.verb.to_ascii_lowercase();
    if args.resource.starts_with('/') {
        let info =
            gatehouse_proxy::request_info::parse(&verb.to_ascii_uppercase(), &args.resource, None)
                .map_err(|e| anyhow::anyhow!("{} {}: {e}", args.verb, args.resource))?;
        return Ok((info, notes));
    }
    let (main, mut subresource) = match args.resource.split_once('/') {
        Some((main, sub)) => (main, sub.to_owned()),
        None => (args.resource.as_str(), String::new()),
    };
    let (resource, group) = main.split_once('.').unwrap_or((main, ""));
    if resource.is_empty() || subresource.contains('/') {
        bail!(
            "resource {:?}: write RESOURCE[.GROUP][/SUBRESOURCE], e.g. pods, pods/log, \
             deployments.apps/scale",
            args.resource
        );
    }
    if subresource.is_empty() && resource == "pods" && STREAMING.contains(&verb.as_str()) {
        subresource = verb.clone();
    }
    if STREAMING.contains(&subresource.as_str()) && verb != subresource {
        notes.push(format!(
            "the proxy sees {resource}/{subresource} as verb {subresource}, not {verb}"
        ));
        verb = subresource.clone();
    }
    let name = args.name.as_deref().unwrap_or("");
    let named = !name.is_empty();
    let (method, query) = match verb.as_str() {
        "get" | "update" | "patch" | "delete" if !named => {
            bail!("{verb} needs a NAME (without one, use list, create or deletecollection)")
        }
        "list" | "watch" | "create" | "deletecollection" if named => {
            bail!("{verb} takes no NAME (with one, use get, update, patch or delete)")
        }
        "get" | "list" => ("GET", None),
        "watch" => ("GET", Some("watch=true")),
        "create" => ("POST", None),
        "update" => ("PUT", None),
        "patch" => ("PATCH", None),
        "delete" | "deletecollection" => ("DELETE", None),
        "exec" | "attach" | "portforward" => ("POST", None),
        "proxy" => ("GET", None),
        other => bail!(
            "unknown verb {other:?}; use get, list, watch, create, update, patch, delete, \
             deletecollection, exec, attach, portforward or proxy"
        ),
    };
    let mut path = if group.is_empty() {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{group}/v1")
    };
    if let Some(namespace) = &args.namespace {
        path.push_str(&format!("/namespaces/{namespace}"));
    }
    path.push_str(&format!("/{resource}"));
    if named {
        path.push_str(&format!("/{name}"));
    }
    if !subresource.is_empty() {
        path.push_str(&format!("/{subresource}"));
    }
    let info = gatehouse_proxy::request_info::parse(method, &path, query)
        .map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))?;
    if info.verb != verb {
        bail!(
            "{method} {path} is verb {} to the proxy, not {verb}",
            info.verb
        );
    }
    Ok((info, notes))
}

/// The body as the proxy would receive it, and its content type.
fn body(args: &ExplainArgs, notes: &mut Vec<String>) -> Result<Option<(Vec<u8>, String)>> {
    let Some(path) = &args.body else {
        return Ok(None);
    };
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read body {}", path.display()))?;
    if let Some(content_type) = &args.content_type {
        return Ok(Some((bytes, content_type.clone())));
    }
    if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
        return Ok(Some((bytes, "application/json".into())));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("body {}: neither JSON nor YAML", path.display()))?;
    let value: serde_json::Value = yaml_serde::from_str(&text)
        .map_err(|e| anyhow::anyhow!("body {}: neither JSON nor YAML: {e}", path.display()))?;
    notes.push(format!(
        "body {} is YAML; explained as the JSON kubectl would send",
        path.display()
    ));
    Ok(Some((
        serde_json::to_vec(&value)?,
        "application/json".into(),
    )))
}

fn explain(args: ExplainArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read policy {}", args.policy.display()))?;
    let policy = Policy::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("policy {}: {e}", args.policy.display()))?;
    let (request, mut notes) = request_info(&args)?;
    let mut identity = Identity {
        issuer: "gatehouse policy explain".into(),
        subject: args.principal.clone(),
        principal: args.principal.clone(),
        registered: true,
        owner: None,
        team: None,
        purpose: None,
        groups: args.groups.clone(),
        attributes: Default::default(),
    };
    let registry = match (&args.identities, args.no_registry) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => None,
        (None, false) => {
            let beside = args
                .policy
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("identities.yaml");
            if !beside.is_file() {
                anyhow::bail!(
                    "no identity registry: the proxy answers from its registry (groups, unknown \
                     identities), and {} is not there. Pass --identities FILE, or --no-registry \
                     to explain for a caller with only the --group groups given",
                    beside.display()
                );
            }
            notes.push(format!("identity registry: {}", beside.display()));
            Some(beside)
        }
    };
    if let Some(path) = &registry {
        let registry_text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read identity registry {}", path.display()))?;
        let registry = gatehouse_proxy::identity::Registry::from_yaml(&registry_text)
            .map_err(|e| anyhow::anyhow!("identity registry {}: {e}", path.display()))?;
        identity = registry.resolve(&gatehouse_proxy::authn::Verified {
            issuer: identity.issuer,
            subject: identity.subject,
            principal: identity.principal,
            groups: identity.groups,
            attributes: identity.attributes,
        });
    }
    let body = body(&args, &mut notes)?;
    let input = PolicyInput {
        identity: &identity,
        request: &request,
        command: &args.command,
        body: body.as_ref().map(|(b, _)| b.as_slice()),
        content_type: body.as_ref().map(|(_, t)| t.as_str()),
    };
    let explanation = if identity.registered {
        policy::explain(&policy, &input)
    } else {
        notes.push(format!(
            "{} is not in the identity registry: the proxy consults no rule for it and allows \
             only API discovery (defaults.allow_discovery)",
            args.principal
        ));
        policy::explain_unregistered(&policy, &input)
    };
    println!(
        "request: {} {} as {} (groups: {})",
        request.verb,
        policy::describe(&request),
        identity.principal,
        if identity.groups.is_empty() {
            "none".to_owned()
        } else {
            identity.groups.join(", ")
        }
    );
    for note in &notes {
        println!("note: {note}");
    }
    print!("{explanation}");
    Ok(ExitCode::SUCCESS)
}
