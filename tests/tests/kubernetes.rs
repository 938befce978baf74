//! Kubernetes manifests (`deploy/kubernetes/`) and the Helm chart (`deploy/helm/domesday/`).
//!
//! There is no helm binary here, so the chart keeps to a small subset of Go template syntax that
//! [`render`] implements exactly, refusing anything else (an unsupported construct fails the test
//! instead of rendering wrongly). The plain manifests are the chart rendered with its default values
//! for a release named `domesday` (`UPDATE_DEPLOY=1 cargo test -p domesday-tests --test kubernetes`
//! regenerates them, and the chart's copies of the dashboards and rules). Every manifest and every
//! rendered template is parsed and checked: the agent's and the collector's security properties,
//! mounts and the arguments that point at them, images, labels, the ServiceMonitor's selectors, and
//! the agent's and collector's configurations through the real binaries' `check-config`, and the rendered pods'
//! commands taking a fixture node's data to the collector.

use domesday_tests::{binary, workspace_root};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn chart_dir() -> PathBuf {
    workspace_root().join("deploy/helm/domesday")
}

fn manifests_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML stream as JSON values; empty documents (a toggled-off template) are skipped.
fn parse_docs(text: &str, what: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in format!("\n{text}").split("\n---\n") {
        // The separator's newline ends the document before it, as in a YAML stream.
        let v: Value = serde_norway::from_str(&format!("{doc}\n")).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

/// What a template sees besides the values.
struct Release<'a> {
    name: &'a str,
    namespace: &'a str,
    service: &'a str,
}

// ---------------------------------------------------------------------------------------------
// The template subset: text, and actions `{{ … }}` with optional `-` trim markers, of the forms
//   if PIPELINE  …  end        (truthiness as Go's: false, 0, "", null, empty list/map are false)
//   PIPELINE                   a value printed (strings raw, numbers, booleans)
// where PIPELINE is one of `.Values.a.b`, `.Release.Name|Namespace|Service`, `.Chart.Version|AppVersion`,
// `.Files.Get "path"`, or `toYaml X`, followed by any of `| indent N`, `| nindent N`.
// Anything else is an error, as is a value path that does not exist.
// ---------------------------------------------------------------------------------------------

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(tpl: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = tpl;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        let after = &rest[start + 2..];
        let trim_before = after.starts_with('-');
        let end = after.find("}}").ok_or_else(|| "an unclosed `{{`".to_string())?;
        let mut body = &after[..end];
        let trim_after = body.ends_with('-');
        if trim_before {
            body = &body[1..];
        }
        if trim_after {
            body = &body[..body.len() - 1];
        }
        if trim_next {
            text = text.trim_start().to_string();
        }
        if trim_before {
            text = text.trim_end().to_string();
        }
        tokens.push(Token::Text(text));
        tokens.push(Token::Action(body.trim().to_string()));
        trim_next = trim_after;
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    tokens.push(Token::Text(text.to_string()));
    Ok(tokens)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))
}

fn to_yaml(v: &Value) -> Result<String, String> {
    let s = serde_norway::to_string(v).map_err(|e| e.to_string())?;
    Ok(s.trim_end_matches('\n').to_string())
}

fn eval(pipeline: &str, values: &Value, release: &Release, chart: &Value, dir: &Path) -> Result<Value, String> {
    let mut stages = pipeline.split('|').map(str::trim);
    let head = stages.next().unwrap_or_default();
    let lookup = |path: &str| -> Result<Value, String> {
        if let Some(p) = path.strip_prefix(".Values.") {
            let mut v = values;
            for key in p.split('.') {
                v = v.get(key).ok_or_else(|| format!("no value {path}"))?;
            }
            return Ok(v.clone());
        }
        match path {
            ".Release.Name" => Ok(json!(release.name)),
            ".Release.Namespace" => Ok(json!(release.namespace)),
            ".Release.Service" => Ok(json!(release.service)),
            ".Chart.Version" => Ok(chart["version"].clone()),
            ".Chart.AppVersion" => Ok(chart["appVersion"].clone()),
            _ => Err(format!("unsupported expression `{path}`")),
        }
    };
    let mut v = if let Some(arg) = head.strip_prefix("toYaml ") {
        json!(to_yaml(&lookup(arg.trim())?)?)
    } else if let Some(arg) = head.strip_prefix(".Files.Get ") {
        let name = arg.trim().strip_prefix('"').and_then(|a| a.strip_suffix('"')).ok_or("a quoted file name")?;
        if name.contains("..") || name.starts_with('/') {
            return Err(format!("{name}: outside the chart"));
        }
        json!(std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"))?)
    } else {
        lookup(head)?
    };
    for stage in stages {
        let (func, arg) = stage.split_once(' ').ok_or_else(|| format!("unsupported function `{stage}`"))?;
        let n: usize = arg.trim().parse().map_err(|_| format!("`{stage}`: a width"))?;
        let s = v.as_str().ok_or_else(|| format!("`{stage}` of a non-string"))?.to_string();
        v = match func {
            "indent" => json!(indent(&s, n)),
            "nindent" => json!(format!("\n{}", indent(&s, n))),
            _ => return Err(format!("unsupported function `{func}`")),
        };
    }
    Ok(v)
}

fn render(tpl: &str, values: &Value, release: &Release) -> Result<String, String> {
    let chart: Value = serde_norway::from_str(&read(&chart_dir().join("Chart.yaml"))).map_err(|e| e.to_string())?;
    let dir = chart_dir();
    let mut out = String::new();
    // One entry per open `if`: whether its body is emitted.
    let mut open: Vec<bool> = Vec::new();
    for token in tokenize(tpl)? {
        let on = open.iter().all(|b| *b);
        match token {
            Token::Text(t) if on => out.push_str(&t),
            Token::Text(_) => {}
            Token::Action(a) if a == "end" => {
                open.pop().ok_or("`end` without `if`")?;
            }
            Token::Action(a) => {
                if let Some(cond) = a.strip_prefix("if ") {
                    // Evaluated even when not emitted, so a bad path fails whatever the toggles.
                    open.push(truthy(&eval(cond.trim(), values, release, &chart, &dir)?));
                    continue;
                }
                let v = eval(&a, values, release, &chart, &dir)?;
                if on {
                    match v {
                        Value::String(s) => out.push_str(&s),
                        Value::Number(n) => out.push_str(&n.to_string()),
                        Value::Bool(b) => out.push_str(&b.to_string()),
                        other => return Err(format!("`{a}` prints {other}: use toYaml")),
                    }
                }
            }
        }
    }
    if !open.is_empty() {
        return Err("`if` without `end`".into());
    }
    Ok(out)
}

fn default_values() -> Value {
    serde_norway::from_str(&read(&chart_dir().join("values.yaml"))).expect("values.yaml")
}

fn templates() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(chart_dir().join("templates"))
        .expect("templates")
        .map(|e| e.expect("entry").path())
        .map(|p| (p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(), read(&p)))
        .collect();
    out.sort();
    out
}

fn render_chart(values: &Value, release: &Release) -> Vec<(String, String)> {
    templates()
        .into_iter()
        .map(|(name, tpl)| {
            let text = render(&tpl, values, release).unwrap_or_else(|e| panic!("templates/{name}: {e}"));
            (name, text)
        })
        .collect()
}

const HELM: Release<'static> = Release { name: "domesday", namespace: "domesday", service: "Helm" };
const PLAIN: Release<'static> = Release { name: "domesday", namespace: "domesday", service: "kubectl" };

/// The plain manifests generated from the chart, one file per template (the rules are
/// `domesday-rules.yaml`, generated by the alerts test).
fn plain_manifest(name: &str, rendered: &str) -> String {
    format!(
        "# Generated from deploy/helm/domesday/templates/{name} with the chart's default values (release\n\
         # \"domesday\") by the tests (UPDATE_DEPLOY=1 cargo test -p domesday-tests --test kubernetes); do not edit.\n{}\n",
        rendered.trim()
    )
}

// ---------------------------------------------------------------------------------------------

/// `Kind/name` of an object.
fn id(o: &Value) -> String {
    format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
}

fn objects_of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind && o["metadata"]["name"] == name).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

fn labels(o: &Value) -> &Map<String, Value> {
    o["metadata"]["labels"].as_object().unwrap_or_else(|| panic!("{} has no labels", o["metadata"]["name"]))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    let cs = workload["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    cs.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("container {name}"))
}

fn args(c: &Value) -> Vec<&str> {
    c["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("string arg")).collect()
}

/// The value following `flag` in the arguments.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied()
}

fn mount<'a>(workload: &'a Value, container_name: &str, path: &str) -> (&'a Value, &'a Value) {
    let c = container(workload, container_name);
    let m = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("no mount at {path}"));
    let vols = workload["spec"]["template"]["spec"]["volumes"].as_array().expect("volumes");
    let v = vols.iter().find(|v| v["name"] == m["name"]).unwrap_or_else(|| panic!("no volume {}", m["name"]));
    (m, v)
}

fn workspace_version() -> String {
    let cargo = read(&workspace_root().join("Cargo.toml"));
    let line = cargo.lines().find(|l| l.starts_with("version = ")).expect("workspace version");
    line.trim_start_matches("version = ").trim_matches('"').to_string()
}

/// Every check on a complete set of objects (the plain manifests, or the chart rendered with its defaults).
fn check_objects(objects: &[Value], release: &Release, what: &str) {
    let r = release.name;
    let version = workspace_version();
    for o in objects {
        let l = labels(o);
        for key in ["name", "instance", "component", "part-of", "managed-by", "version"] {
            let k = format!("app.kubernetes.io/{key}");
            assert!(
                l.get(&k).and_then(Value::as_str).is_some_and(|v| !v.is_empty()),
                "{what}: {} lacks {k}",
                o["metadata"]["name"]
            );
        }
        assert_eq!(l["app.kubernetes.io/part-of"], "domesday", "{what}");
        assert_eq!(l["app.kubernetes.io/instance"], r, "{what}");
        assert_eq!(l["app.kubernetes.io/managed-by"], release.service, "{what}");
        assert_eq!(l["app.kubernetes.io/version"], version.as_str(), "{what}");
        assert!(o["metadata"].get("namespace").is_none(), "{what}: the namespace comes from kubectl -n / helm -n");
    }

    // The agent: a DaemonSet reading the host through read-only mounts, UID 0 without any capability.
    let ds = one(objects, "DaemonSet", &format!("{r}-agent"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}: no service account token");
    for host_ns in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(host_ns).is_none_or(|v| v == false), "{what}: {host_ns}");
    }
    assert!(
        pod.get("hostUsers").is_none_or(|v| v == true),
        "{what}: a user namespace would remap UID 0 away from energy_uj"
    );
    let agent = container(ds, "agent");
    let sc = &agent["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "{what}: UID 0 reads RAPL energy_uj (0400 root) as its owner");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert!(sc["capabilities"].get("add").is_none(), "{what}: no capability added");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert!(sc.get("privileged").is_none_or(|v| v == false), "{what}");
    assert!(pod["securityContext"].get("runAsNonRoot").is_none_or(|v| v == false), "{what}");
    assert_eq!(
        agent["image"],
        format!("localhost/domesday-agent:{version}"),
        "{what}: the image build-from-scratch.sh tags"
    );
    let a = args(agent);
    assert_eq!(a[0], "run", "{what}");
    for (arg, path, host) in [("--sysfs-root", "/host/sys", "/sys"), ("--procfs-root", "/host/proc", "/proc")] {
        assert_eq!(flag(&a, arg), Some(path), "{what}: {arg}");
        let (m, v) = mount(ds, "agent", path);
        assert_eq!(m["readOnly"], true, "{what}: {path} read-only");
        assert_eq!(v["hostPath"]["path"], host, "{what}: {path} is the host's {host}");
    }
    let (m, v) = mount(ds, "agent", "/etc/machine-id");
    assert_eq!(
        (&m["readOnly"], &v["hostPath"]["path"], &v["hostPath"]["type"]),
        (&json!(true), &json!("/etc/machine-id"), &json!("File")),
        "{what}"
    );
    let (m, v) = mount(ds, "agent", "/var/lib/domesday-agent");
    assert!(m.get("readOnly").is_none_or(|v| v == false), "{what}: the state directory is written");
    assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate", "{what}: state on the node, across pod restarts");
    let (_, v) = mount(ds, "agent", "/etc/domesday");
    assert_eq!(flag(&a, "--config"), Some("/etc/domesday/agent.toml"), "{what}");
    let agent_cm = one(objects, "ConfigMap", v["configMap"]["name"].as_str().expect("config map"));
    let agent_toml = agent_cm["data"]["agent.toml"].as_str().expect("agent.toml");
    assert!(agent_toml.contains("listen = \"0.0.0.0:9955\""), "{what}: /metrics on the pod's address");
    assert!(agent_toml.contains("state_dir = \"/var/lib/domesday-agent\""), "{what}: state_dir is the hostPath mount");
    assert!(agent_toml.contains(&format!("url = \"http://{r}-collector:9956/api/v1/write\"")), "{what}");
    assert_eq!(flag(&a, "--host"), Some("$(NODE_NAME)"), "{what}");
    let env = agent["env"].as_array().expect("env");
    let node = env.iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "{what}");
    let token = env.iter().find(|e| e["name"] == "DOMESDAY_PUSH_TOKEN").expect("DOMESDAY_PUSH_TOKEN");
    assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "token", "{what}");
    let secret = token["valueFrom"]["secretKeyRef"]["name"].clone();
    assert_eq!(agent["ports"][0]["containerPort"], 9955, "{what}");

    // The collector: non-root, read-only root, the ledger on a claim, the token from the same Secret.
    let sts = one(objects, "StatefulSet", &format!("{r}-collector"));
    assert_eq!(sts["spec"]["replicas"], 1, "{what}: one ledger writer");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{what}: the image's user (Containerfile.collector)");
    let collector = container(sts, "collector");
    let sc = &collector["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert_eq!(collector["image"], format!("localhost/domesday-collector:{version}"), "{what}");
    let ca = args(collector);
    assert_eq!((ca[0], flag(&ca, "--config")), ("serve", Some("/etc/domesday/collector.toml")), "{what}");
    let ledger = collector["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/domesday-collector")
        .expect("ledger mount");
    let claims = sts["spec"]["volumeClaimTemplates"].as_array().expect("volume claims");
    assert!(
        claims.iter().any(|c| c["metadata"]["name"] == ledger["name"]),
        "{what}: the ledger is on a PersistentVolumeClaim"
    );
    let (_, v) = mount(sts, "collector", "/etc/domesday");
    let sources = v["projected"]["sources"].as_array().expect("projected config");
    let cm_name = sources.iter().find_map(|s| s["configMap"]["name"].as_str()).expect("config map");
    let collector_toml = one(objects, "ConfigMap", cm_name)["data"]["collector.toml"].as_str().expect("collector.toml");
    assert!(collector_toml.contains("listen = \"0.0.0.0:9956\""), "{what}");
    assert!(
        collector_toml.contains("db = \"/var/lib/domesday-collector/domesday.db\""),
        "{what}: the ledger on the claim"
    );
    let s = sources.iter().find(|s| s.get("secret").is_some()).expect("the token Secret");
    assert_eq!(s["secret"]["name"], secret, "{what}: agents and collector share the site's token");
    assert_eq!(s["secret"]["items"], json!([{"key": "token", "path": "token"}]), "{what}");
    assert!(collector_toml.contains("token_file = \"/etc/domesday/token\""), "{what}");

    // Services and the ServiceMonitor that selects them, ports by name.
    let agent_svc = one(objects, "Service", &format!("{r}-agent"));
    let collector_svc = one(objects, "Service", &format!("{r}-collector"));
    for (svc, workload, port) in [(agent_svc, ds, "metrics"), (collector_svc, sts, "http")] {
        let sel = svc["spec"]["selector"].as_object().expect("selector");
        let pod_labels = workload["spec"]["template"]["metadata"]["labels"].as_object().expect("pod labels");
        assert!(
            sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{what}: {} selects its pods",
            svc["metadata"]["name"]
        );
        assert_eq!(&workload["spec"]["selector"]["matchLabels"], &svc["spec"]["selector"], "{what}");
        let p = &svc["spec"]["ports"][0];
        assert_eq!((&p["name"], &p["targetPort"]), (&json!(port), &json!(port)), "{what}");
        let cport =
            &container(workload, workload["spec"]["template"]["spec"]["containers"][0]["name"].as_str().expect("name"))
                ["ports"][0];
        assert_eq!(cport["name"], port, "{what}");
    }
    let sm = one(objects, "ServiceMonitor", r);
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1", "{what}");
    let sel = sm["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    let ports: Vec<&str> = sm["spec"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["port"].as_str().expect("port by name"))
        .collect();
    for (svc, port) in [(agent_svc, "metrics"), (collector_svc, "http")] {
        assert!(
            sel.iter().all(|(k, v)| labels(svc).get(k) == Some(v)),
            "{what}: the ServiceMonitor selects {}",
            svc["metadata"]["name"]
        );
        assert!(ports.contains(&port), "{what}: the ServiceMonitor scrapes port {port}");
    }

    // The dashboards, one ConfigMap each, labelled for Grafana's sidecar, equal to dashboards/*.json.
    let dashboards: Vec<_> = objects_of_kind(objects, "ConfigMap")
        .into_iter()
        .filter(|c| labels(c).contains_key("grafana_dashboard"))
        .collect();
    let mut files = Vec::new();
    for e in std::fs::read_dir(workspace_root().join("dashboards")).expect("dashboards") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            files.push(p);
        }
    }
    assert!(!files.is_empty());
    assert_eq!(dashboards.len(), files.len(), "{what}: one ConfigMap per dashboard");
    for f in files {
        let key = f.file_name().and_then(|n| n.to_str()).expect("name");
        let cm = dashboards
            .iter()
            .find(|c| c["data"].get(key).is_some())
            .unwrap_or_else(|| panic!("{what}: no ConfigMap for {key}"));
        assert_eq!(labels(cm)["grafana_dashboard"], "1", "{what}");
        let have: Value = serde_json::from_str(cm["data"][key].as_str().expect("json")).expect("dashboard JSON");
        let want: Value = serde_json::from_str(&read(&f)).expect("dashboard");
        assert!(have == want, "{what}: {key} differs from dashboards/{key}");
    }
}

fn plain_objects() -> Vec<Value> {
    let mut objects = Vec::new();
    for (name, _) in templates() {
        if name == "prometheusrule.yaml" {
            continue;
        }
        let path = manifests_dir().join(&name);
        objects.extend(parse_docs(&read(&path), &path.display().to_string()));
    }
    objects
}

fn rendered_objects(values: &Value, release: &Release) -> Vec<Value> {
    render_chart(values, release).iter().flat_map(|(name, text)| parse_docs(text, name)).collect()
}

#[test]
fn the_plain_manifests_and_the_charts_copies_are_up_to_date() {
    let update = std::env::var_os("UPDATE_DEPLOY").is_some();
    let mut stale = Vec::new();
    let mut copies = vec![(
        workspace_root().join("deploy/prometheus/domesday-rules.yml"),
        chart_dir().join("files/domesday-rules.yml"),
    )];
    for e in std::fs::read_dir(workspace_root().join("dashboards")).expect("dashboards") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            let copy = chart_dir().join("files/dashboards").join(p.file_name().expect("name"));
            copies.push((p, copy));
        }
    }
    for (from, to) in copies {
        let want = read(&from);
        if update {
            std::fs::write(&to, &want).expect("write");
        }
        if std::fs::read_to_string(&to).unwrap_or_default() != want {
            stale.push(to.display().to_string());
        }
    }
    for (name, rendered) in render_chart(&default_values(), &PLAIN) {
        if name == "prometheusrule.yaml" {
            continue;
        }
        let path = manifests_dir().join(&name);
        let want = plain_manifest(&name, &rendered);
        if update {
            std::fs::write(&path, &want).expect("write");
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != want {
            stale.push(path.display().to_string());
        }
    }
    assert!(stale.is_empty(), "stale: {stale:?}: UPDATE_DEPLOY=1 cargo test -p domesday-tests --test kubernetes");
}

#[test]
fn the_plain_manifests_have_the_security_properties_mounts_labels_and_selectors() {
    let objects = plain_objects();
    check_objects(&objects, &PLAIN, "deploy/kubernetes");
    // The namespace: Pod Security "privileged", because hostPath volumes are forbidden by "baseline".
    let ns = parse_docs(&read(&manifests_dir().join("namespace.yaml")), "namespace.yaml");
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0]["kind"], "Namespace");
    assert_eq!(ns[0]["metadata"]["name"], PLAIN.namespace);
    let l = labels(&ns[0]);
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(l[&format!("pod-security.kubernetes.io/{mode}")], "privileged", "{mode}");
    }
    // The PrometheusRule of deploy/kubernetes carries the standard labels too.
    let rule = parse_docs(&read(&manifests_dir().join("domesday-rules.yaml")), "domesday-rules.yaml");
    assert_eq!(labels(&rule[0])["app.kubernetes.io/part-of"], "domesday");
    assert_eq!(labels(&rule[0])["app.kubernetes.io/instance"], "domesday");
}

#[test]
fn the_chart_renders_the_same_objects_and_its_values_follow_the_schema() {
    let values = default_values();
    let schema: Value = serde_json::from_str(&read(&chart_dir().join("values.schema.json"))).expect("schema JSON");
    let validator = jsonschema::draft7::new(&schema).expect("a valid draft-07 schema");
    let errors: Vec<String> = validator.iter_errors(&values).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "values.yaml:\n{}", errors.join("\n"));
    // The schema refuses what would break the generated TOML or the objects.
    for (path, bad) in [
        ("/site", json!("Caen 1\"")),
        ("/agent/enabled", json!("yes")),
        ("/agent/image/pullPolicy", json!("Sometimes")),
        ("/collector/storage/size", json!("10GB")),
        ("/siteName", json!("a \"quoted\" name")),
    ] {
        let mut v = values.clone();
        *v.pointer_mut(path).expect(path) = bad.clone();
        assert!(!validator.is_valid(&v), "the schema accepts {path} = {bad}");
    }
    let mut v = values.clone();
    v["agent"]["hostNetwork"] = json!(true);
    assert!(!validator.is_valid(&v), "unknown keys are refused");

    let chart: Value = serde_norway::from_str(&read(&chart_dir().join("Chart.yaml"))).expect("Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], workspace_version().as_str());
    assert_eq!(
        (&values["agent"]["image"]["tag"], &values["collector"]["image"]["tag"]),
        (&chart["appVersion"], &chart["appVersion"])
    );

    let rendered = rendered_objects(&values, &HELM);
    check_objects(&rendered, &HELM, "helm");
    // The same objects as the plain manifests but for the managed-by label.
    let mut plain = plain_objects();
    plain.extend(parse_docs(&read(&manifests_dir().join("domesday-rules.yaml")), "domesday-rules.yaml"));
    let strip = |mut o: Value| {
        o["metadata"]["labels"].as_object_mut().expect("labels").remove("app.kubernetes.io/managed-by");
        for path in ["/spec/template/metadata/labels", "/spec/volumeClaimTemplates/0/metadata/labels"] {
            if let Some(l) = o.pointer_mut(path).and_then(Value::as_object_mut) {
                l.remove("app.kubernetes.io/managed-by");
            }
        }
        o
    };
    let mut a: Vec<Value> = rendered.into_iter().map(strip).collect();
    let mut b: Vec<Value> = plain.into_iter().map(strip).collect();
    let key = |o: &Value| id(o);
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a.iter().map(key).collect::<Vec<_>>(), b.iter().map(key).collect::<Vec<_>>());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y, "{} differs between the chart and deploy/kubernetes", key(x));
    }
}

#[test]
fn the_charts_toggles_remove_their_objects() {
    let kinds = |values: &Value| -> Vec<String> {
        let mut k: Vec<String> = rendered_objects(values, &HELM).iter().map(id).collect();
        k.sort();
        k
    };
    let all = kinds(&default_values());
    for (toggle, gone) in [
        ("agent", vec!["DaemonSet/domesday-agent", "Service/domesday-agent", "ConfigMap/domesday-agent"]),
        (
            "collector",
            vec!["StatefulSet/domesday-collector", "Service/domesday-collector", "ConfigMap/domesday-collector"],
        ),
        ("serviceMonitor", vec!["ServiceMonitor/domesday"]),
        ("prometheusRule", vec!["PrometheusRule/domesday-rules"]),
        ("dashboards", vec!["ConfigMap/domesday-dashboard-host", "ConfigMap/domesday-dashboard-site"]),
    ] {
        let mut values = default_values();
        values[toggle]["enabled"] = json!(false);
        let have = kinds(&values);
        for g in &gone {
            assert!(all.contains(&g.to_string()), "{g} is rendered by default");
            assert!(!have.contains(&g.to_string()), "{toggle}.enabled=false still renders {g}");
        }
        assert!(have.len() < all.len() && have.iter().all(|k| all.contains(k)), "{toggle}");
    }
    // A storage class, when named, reaches the claim; empty, the field is absent (the cluster's default).
    let mut values = default_values();
    values["collector"]["storage"]["storageClassName"] = json!("fast");
    let objects = rendered_objects(&values, &HELM);
    let sts = one(&objects, "StatefulSet", "domesday-collector");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast");
    let objects = rendered_objects(&default_values(), &HELM);
    assert!(
        one(&objects, "StatefulSet", "domesday-collector")["spec"]["volumeClaimTemplates"][0]["spec"]
            .get("storageClassName")
            .is_none()
    );
}

#[test]
fn the_renderer_refuses_what_it_does_not_implement() {
    let v = default_values();
    for bad in [
        "{{ include \"x\" . }}",
        "{{ .Values.nope.nope }}",
        "{{ .Values.site | quote }}",
        "{{ .Values.agent }}",
        "{{- if .Values.agent.enabled }}open",
        "{{ end }}",
        "{{ .Files.Get \"../values.yaml\" }}",
        "{{ .Capabilities.KubeVersion }}",
        "{{ .Values.site",
    ] {
        assert!(render(bad, &v, &HELM).is_err(), "rendered {bad:?}");
    }
    assert_eq!(render("a {{- .Values.site -}} \n b", &v, &HELM).expect("trim"), "alocalb");
    assert_eq!(
        render("{{ toYaml .Values.agent.nodeSelector | nindent 2 }}", &v, &HELM).expect("yaml"),
        "\n  kubernetes.io/os: linux"
    );
    assert_eq!(render("{{- if .Values.serviceMonitor.labels }}x{{- end }}y", &v, &HELM).expect("if"), "y");
}

/// The generated configurations pass the real binaries' `check-config` (paths of the pod moved into a temp dir).
#[test]
fn the_generated_configurations_pass_check_config() {
    let mut values = default_values();
    // Extra TOML lands before [push] / [[sites]]: top-level keys and tables both work.
    values["agent"]["extraConfig"] = json!("sensor_timeout = \"1s\"\n[labels]\nrack = \"r01\"");
    values["collector"]["extraConfig"] = json!("[ingest]\nmax_body_bytes = 1048576");
    let objects = rendered_objects(&values, &HELM);
    let dir = tempfile::tempdir().expect("tmp");
    let agent_toml =
        one(&objects, "ConfigMap", "domesday-agent")["data"]["agent.toml"].as_str().expect("agent.toml").to_string();
    let state = dir.path().join("agent-state");
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(&agent_cfg, agent_toml.replace("/var/lib/domesday-agent", &state.display().to_string()))
        .expect("write");
    let out = domesday_tests::agent_output(
        Command::new(binary("domesday-agent"))
            .args(["check-config", "--config"])
            .arg(&agent_cfg)
            .env("DOMESDAY_PUSH_TOKEN", "push-t0ken-k8s"),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent check-config:\n{text}");
    for want in ["0.0.0.0:9955", "http://domesday-collector:9956/api/v1/write", "r01", "1s"] {
        assert!(text.contains(want), "{want} missing from the effective configuration:\n{text}");
    }

    let collector_toml = one(&objects, "ConfigMap", "domesday-collector")["data"]["collector.toml"]
        .as_str()
        .expect("collector.toml")
        .to_string();
    std::fs::write(dir.path().join("token"), "t0ken-k8s-collector\n").expect("token");
    let collector_cfg = dir.path().join("collector.toml");
    let moved = collector_toml
        .replace("/etc/domesday/token", &dir.path().join("token").display().to_string())
        .replace("/var/lib/domesday-collector", &dir.path().display().to_string());
    std::fs::write(&collector_cfg, moved).expect("write");
    let out = domesday_tests::collector_output(
        Command::new(binary("domesday-collector")).args(["check-config", "--config"]).arg(&collector_cfg),
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "collector check-config:\n{text}");
    assert!(text.contains("local") && text.contains("1048576"), "{text}");
}

/// The rendered pods' commands and configurations, with the pod's paths and addresses moved to a fixture tree and
/// loopback ports, take a node's data to the collector: the agent runs with the DaemonSet's arguments
/// (`$(NODE_NAME)` expanded as the kubelet does) and pushes with the Secret's token to the collector running with the
/// StatefulSet's arguments.
#[test]
fn the_rendered_agent_pushes_a_node_to_the_rendered_collector() {
    let objects = rendered_objects(&default_values(), &HELM);
    let (_fixture, root) = domesday_tests::fixture_copy("intel-2s");
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display().to_string();
    let token = "k8s-test-token";
    std::fs::write(dir.path().join("token"), format!("{token}\n")).expect("token");

    let cport = domesday_tests::free_port();
    let collector_toml =
        one(&objects, "ConfigMap", "domesday-collector")["data"]["collector.toml"].as_str().expect("toml").to_string();
    let collector_cfg = dir.path().join("collector.toml");
    let moved = collector_toml
        .replace("0.0.0.0:9956", &format!("127.0.0.1:{cport}"))
        .replace("/etc/domesday/token", &format!("{d}/token"))
        .replace("/var/lib/domesday-collector", &d);
    std::fs::write(&collector_cfg, moved).expect("write");
    let sts = one(&objects, "StatefulSet", "domesday-collector");
    let cargs: Vec<String> = args(container(sts, "collector"))
        .iter()
        .map(|a| a.replace("/etc/domesday/collector.toml", &collector_cfg.display().to_string()))
        .collect();
    let collector = domesday_tests::Collector::spawn_command(
        Command::new(binary("domesday-collector")).args(&cargs),
        cport,
        dir.path(),
    );
    let api = collector.url("");

    let aport = domesday_tests::free_port();
    let agent_toml =
        one(&objects, "ConfigMap", "domesday-agent")["data"]["agent.toml"].as_str().expect("toml").to_string();
    let agent_cfg = dir.path().join("agent.toml");
    // A 1 s tick and push instead of 5 s and 15 s, so the test is short ([push] is the last table).
    let moved = agent_toml
        .replace("0.0.0.0:9955", &format!("127.0.0.1:{aport}"))
        .replace("/var/lib/domesday-agent", &format!("{d}/agent-state"))
        .replace("http://domesday-collector:9956", &api)
        .replace("interval = \"5s\"", "interval = \"1s\"")
        + "interval = \"1s\"\n";
    std::fs::write(&agent_cfg, moved).expect("write");
    let ds = one(&objects, "DaemonSet", "domesday-agent");
    let aargs: Vec<String> = args(container(ds, "agent"))
        .iter()
        .map(|a| {
            a.replace("/etc/domesday/agent.toml", &agent_cfg.display().to_string())
                .replace("/host/sys", &root.join("sys").display().to_string())
                .replace("/host/proc", &root.join("proc").display().to_string())
                .replace("$(NODE_NAME)", "node-7")
        })
        .collect();
    let _agent = domesday_tests::spawn_agent(
        Command::new(binary("domesday-agent")).args(&aargs).env("DOMESDAY_PUSH_TOKEN", token),
        &dir.path().join("agent.log"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut hosts = String::new();
    while std::time::Instant::now() < deadline {
        hosts = domesday_tests::get_text(&format!("{api}/api/v1/sites/local/hosts"), std::time::Duration::from_secs(5));
        if hosts.contains("\"node-7\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(hosts.contains("\"node-7\""), "the node never reached the collector: {hosts}\nagent:\n{log}");
    let metrics =
        domesday_tests::get_text(&format!("http://127.0.0.1:{aport}/metrics"), std::time::Duration::from_secs(5));
    assert!(metrics.contains("host=\"node-7\"") && metrics.contains("site=\"local\""), "{metrics}");
    drop(collector);
}
