//! The shipped deployment: the hardened systemd units (`deploy/systemd/`), checked
//! with `systemd-analyze verify` and scored with `systemd-analyze security
//! --offline=yes`, and the Debian packages built by cargo-deb from the debug
//! binaries: lintian, their content and modes, an install into a throwaway root
//! (`dpkg --root`, maintainer scripts chrooted there, never the host's packages),
//! the installed binaries run on the shipped configs, and a purge that leaves only
//! the system users and dpkg's own records. The container images: both built with
//! buildah from `scratch` (no registry) in a temporary storage, each binary's
//! `--version` run inside its image; the multi-stage Containerfiles' shape.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use domesday_tests::{binary, workspace_root};

/// Highest accepted `systemd-analyze security` exposure (0–10 scale) per unit.
const EXPOSURE_LIMITS: [(&str, f64); 2] = [("domesday-agent", 4.5), ("domesday-collector", 3.0)];

fn unit_path(name: &str) -> PathBuf {
    workspace_root().join("deploy/systemd").join(format!("{name}.service"))
}

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(unit_path(name)).expect("unit file")
}

/// Every `Key=value` of a unit's `[Service]` section, in order (keys repeat).
fn service_keys(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut keys = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line.split_once('=').expect("Key=value");
            keys.push((k.to_string(), v.to_string()));
        }
    }
    keys
}

fn key<'a>(keys: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    keys.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A copy of the unit whose `/usr/bin/<binary>` is the built binary, so that
/// `systemd-analyze` finds the executable it checks.
fn unit_for_analysis(dir: &Path, name: &str) -> PathBuf {
    let unit = unit_text(name).replace(&format!("/usr/bin/{name}"), &binary(name).display().to_string());
    let p = dir.join(format!("{name}.service"));
    std::fs::write(&p, unit).expect("write unit");
    p
}

/// The "Overall exposure level for X.service: 1.7 OK" score.
fn exposure(unit: &Path) -> f64 {
    let out = run(Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(unit));
    let all = text(&out);
    let line = all.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score: {all}"));
    let after = line.rsplit_once(": ").map(|(_, s)| s).expect("score");
    after.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad score line {line}"))
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units: Vec<PathBuf> = EXPOSURE_LIMITS.iter().map(|(n, _)| unit_for_analysis(dir.path(), n)).collect();
    let out = run(Command::new("systemd-analyze").arg("verify").args(&units));
    assert!(out.status.success(), "systemd-analyze verify failed:\n{}", text(&out));
    let all = text(&out);
    assert!(!all.contains("domesday"), "systemd-analyze verify complains about our units:\n{all}");
}

#[test]
fn systemd_units_exposure_within_limits_and_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deploy_doc = std::fs::read_to_string(workspace_root().join("docs/deploy.md")).expect("docs/deploy.md");
    for (name, limit) in EXPOSURE_LIMITS {
        let score = exposure(&unit_for_analysis(dir.path(), name));
        assert!(score <= limit, "{name}.service exposure {score} is above {limit}");
        let row = format!("| `{name}.service` | {score:.1} |");
        assert!(deploy_doc.contains(&row), "docs/deploy.md must record the measured score: {row}");
    }
}

#[test]
fn systemd_units_grant_least_privilege() {
    let agent = service_keys(&unit_text("domesday-agent"));
    let collector = service_keys(&unit_text("domesday-collector"));
    // RAPL energy_uj is root-only: the agent keeps exactly one capability, the collector none.
    assert_eq!(key(&agent, "AmbientCapabilities"), ["CAP_DAC_READ_SEARCH"]);
    assert_eq!(key(&agent, "CapabilityBoundingSet"), ["CAP_DAC_READ_SEARCH"]);
    assert_eq!(key(&collector, "CapabilityBoundingSet"), [""]);
    assert_eq!(key(&collector, "AmbientCapabilities"), [""]);
    for (name, keys) in [("domesday-agent", &agent), ("domesday-collector", &collector)] {
        for (k, v) in [
            ("User", name),
            ("StateDirectory", name),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("NoNewPrivileges", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("Restart", "on-failure"),
        ] {
            assert_eq!(key(keys, k), [v], "{name}.service {k}");
        }
        assert_eq!(key(keys, "SystemCallFilter").first(), Some(&"@system-service"), "{name}.service");
        let exec = key(keys, "ExecStart");
        assert_eq!(
            exec,
            [format!(
                "/usr/bin/{name} {} --config /etc/domesday/{}.toml",
                if name == "domesday-agent" { "run" } else { "serve" },
                &name[9..]
            )
            .as_str()]
        );
        // Both reload their TLS files on SIGHUP (tls_e2e); neither speaks sd_notify: no watchdog.
        assert_eq!(key(keys, "ExecReload"), ["/bin/kill -HUP $MAINPID"], "{name}.service");
        assert!(key(keys, "WatchdogSec").is_empty(), "{name}.service");
    }
}

// ---------------------------------------------------------------- Debian packages

const PACKAGES: [&str; 2] = ["domesday-agent", "domesday-collector"];

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds `<package>.deb` with cargo-deb from the debug binary (release builds are
/// minutes here): the binary is placed where cargo-deb looks for a release build
/// under a private target directory, and `--no-build` packages it as is (stripped).
fn build_deb(work: &Path, package: &str) -> PathBuf {
    let version = run(Command::new(cargo()).args(["deb", "--version"]));
    assert!(version.status.success(), "cargo-deb is missing: `cargo install cargo-deb --locked` (./test.sh does)");
    let target = work.join("target");
    let release = target.join("release");
    std::fs::create_dir_all(&release).expect("mkdir");
    let bin = release.join(package);
    if !bin.exists() {
        std::fs::copy(binary(package), &bin).expect("copy binary");
    }
    let out_dir = work.join("debs");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let out = run(Command::new(cargo())
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target)
        .args(["deb", "--no-build", "--strip", "--fast", "--offline", "--locked", "-p", package, "--output"])
        .arg(&out_dir));
    assert!(out.status.success(), "cargo deb -p {package} failed:\n{}", text(&out));
    let deb = String::from_utf8_lossy(&out.stdout).lines().last().map(|l| PathBuf::from(l.trim())).expect("deb path");
    assert!(deb.exists(), "cargo deb printed {} which does not exist", deb.display());
    deb
}

/// `dpkg-deb -c`: (mode, owner, path without the leading '.').
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    let out = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[5].trim_start_matches('.').to_string())
        })
        .collect()
}

/// A root in which dpkg can run the maintainer scripts chrooted: an empty dpkg
/// database, merged-/usr symlinks, a base passwd/group, and the few programs the
/// scripts call (with the libraries `ldd` names). `/dev/urandom` is a regular file
/// of random bytes and `/dev/null` an empty file: the tree has no device nodes.
fn throwaway_root(root: &Path) {
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "etc",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "dev",
        "tmp",
        "run",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    for (link, to) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        std::os::unix::fs::symlink(to, root.join(link)).expect("symlink");
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("status");
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    std::fs::write(root.join("etc/shadow"), "root:*:20000:0:99999:7:::\n").expect("shadow");
    std::fs::write(root.join("etc/gshadow"), "root:*::\n").expect("gshadow");
    let mut random = vec![0u8; 4096];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).expect("read /dev/urandom");
    std::fs::write(root.join("dev/urandom"), random).expect("urandom");
    // The scripts' `>/dev/null` redirections write into this file.
    std::fs::write(root.join("dev/null"), "").expect("null");
    let tools = ["sh", "od", "tr", "chgrp", "chmod", "mv", "rm", "rmdir", "systemd-sysusers"];
    let mut libs = BTreeSet::new();
    for tool in tools {
        let host = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found on this machine"));
        std::fs::copy(&host, root.join("usr/bin").join(tool)).expect("copy tool");
        let ldd = run(Command::new("ldd").arg(&host));
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = line.split("=>").last().and_then(|s| s.split_whitespace().next()).unwrap_or("");
            if path.starts_with('/') {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    for lib in libs {
        let dir = lib.parent().and_then(|d| d.canonicalize().ok()).expect("lib dir");
        let dest = root.join(dir.strip_prefix("/").expect("absolute")).join(lib.file_name().expect("name"));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&lib, &dest).expect("copy lib");
    }
}

/// Every path under `root` (relative, directories with a trailing '/').
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").display().to_string();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    // --force-depends: the throwaway root has no libc6 or systemd packages
    // (the binaries run on the host's). Nothing here touches the host's database.
    let out = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--force-depends")
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
    assert!(out.status.success(), "dpkg {args:?} failed:\n{}", text(&out));
    out
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

#[test]
fn debian_packages_lint_install_run_and_purge() {
    let work = tempfile::tempdir().expect("tempdir");
    let debs: Vec<PathBuf> = PACKAGES.iter().map(|p| build_deb(work.path(), p)).collect();

    // Control fields and content, with modes and owners.
    for (package, deb) in PACKAGES.iter().zip(&debs) {
        let info = text(&run(Command::new("dpkg-deb").arg("-I").arg(deb)));
        assert!(info.contains(&format!("Package: {package}")), "{info}");
        assert!(info.contains(&format!("Version: {}-1", env!("CARGO_PKG_VERSION"))), "{info}");
        assert!(info.contains("libc6 (>= ") && info.contains("systemd"), "Depends: {info}");
        let conffiles = text(&run(Command::new("dpkg-deb").arg("--info").arg(deb).arg("conffiles")));
        let config = format!("/etc/domesday/{}.toml", &package[9..]);
        assert_eq!(conffiles.trim(), config, "conffiles of {package}");
        let files = contents(deb);
        let expect = [
            ("-rwxr-xr-x", format!("/usr/bin/{package}")),
            ("-rw-r--r--", config.clone()),
            ("-rw-r--r--", format!("/usr/lib/systemd/system/{package}.service")),
            ("-rw-r--r--", format!("/usr/lib/sysusers.d/{package}.conf")),
            ("-rw-r--r--", format!("/usr/share/doc/{package}/copyright")),
            ("-rw-r--r--", format!("/usr/share/doc/{package}/changelog.Debian.gz")),
            ("-rw-r--r--", format!("/usr/share/doc/{package}/deploy.md")),
        ];
        for (mode, path) in &expect {
            let found = files
                .iter()
                .find(|(_, _, p)| p == path)
                .unwrap_or_else(|| panic!("{path} not in {package}: {files:?}"));
            assert_eq!((found.0.as_str(), found.1.as_str()), (*mode, "0/0"), "{path} in {package}");
        }
        for (mode, owner, path) in &files {
            assert_eq!(owner, "0/0", "{path}: owned by root");
            assert!(
                !mode.contains('s') && mode.as_bytes()[5] != b'w' && mode.as_bytes()[8] != b'w',
                "{mode} {path}: no setuid/setgid, no group or other write"
            );
        }
    }

    // lintian: no error (warnings are reported, not fatal).
    let lintian = run(Command::new("lintian").args(["--fail-on", "error", "--tag-display-limit", "0"]).args(&debs));
    let report = text(&lintian);
    assert!(lintian.status.success() && !report.lines().any(|l| l.starts_with("E: ")), "lintian errors:\n{report}");

    // Install both into a throwaway root.
    let root = work.path().join("root");
    throwaway_root(&root);
    let before = tree(&root);
    let mut args = vec!["--install"];
    let deb_strs: Vec<String> = debs.iter().map(|d| d.display().to_string()).collect();
    args.extend(deb_strs.iter().map(String::as_str));
    dpkg(&root, &args);

    // The packaged units are the ones in deploy/systemd; the system users exist.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    for package in PACKAGES {
        let installed =
            std::fs::read_to_string(root.join(format!("usr/lib/systemd/system/{package}.service"))).expect("unit");
        assert_eq!(installed, unit_text(package), "{package}.service differs from deploy/systemd");
        let user = passwd
            .lines()
            .find(|l| l.starts_with(&format!("{package}:")))
            .unwrap_or_else(|| panic!("no user {package}: {passwd}"));
        assert!(user.ends_with(":/usr/sbin/nologin"), "{user}");
        let uid: u32 = user.split(':').nth(2).and_then(|u| u.parse().ok()).expect("uid");
        assert!((1..1000).contains(&uid), "{package} is not a system user: {user}");
        let bin = root.join("usr/bin").join(package);
        let version = run(Command::new(&bin).arg("--version"));
        assert!(version.status.success(), "{}", text(&version));
        assert_eq!(text(&version).trim(), format!("{package} {}", env!("CARGO_PKG_VERSION")));
    }

    // The shipped default configs pass check-config as installed.
    let agent_check = domesday_tests::agent_output(
        Command::new(root.join("usr/bin/domesday-agent"))
            .args(["check-config", "--config"])
            .arg(root.join("etc/domesday/agent.toml")),
    );
    assert!(agent_check.status.success(), "agent check-config:\n{}", text(&agent_check));
    assert!(text(&agent_check).contains("local"), "{}", text(&agent_check));

    // The collector's token was generated on install: 64 hex digits, 0640, group
    // domesday-collector. Its config names absolute paths inside the root.
    let token_path = root.join("etc/domesday/local.token");
    let token = std::fs::read_to_string(&token_path).expect("generated token");
    assert!(token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()), "token {token:?}");
    assert_eq!(mode_of(&token_path), 0o640);
    let group = std::fs::read_to_string(root.join("etc/group")).expect("group");
    let gid: u32 = group
        .lines()
        .find(|l| l.starts_with("domesday-collector:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|g| g.parse().ok())
        .expect("group domesday-collector");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&token_path).expect("meta").gid(), gid);
    let shipped = std::fs::read_to_string(root.join("etc/domesday/collector.toml")).expect("collector.toml");
    let rooted = shipped
        .replace("\"/etc/", &format!("\"{}/etc/", root.display()))
        .replace("\"/var/", &format!("\"{}/var/", root.display()));
    let rooted_path = work.path().join("collector-in-root.toml");
    std::fs::write(&rooted_path, rooted).expect("write");
    let collector_check = domesday_tests::collector_output(
        Command::new(root.join("usr/bin/domesday-collector")).args(["check-config", "--config"]).arg(&rooted_path),
        &root.join("etc/domesday"),
    );
    assert!(collector_check.status.success(), "collector check-config:\n{}", text(&collector_check));
    assert!(!text(&collector_check).contains(token.trim()), "check-config printed the token");

    // What the services would create at run time (systemd's StateDirectory=).
    for package in PACKAGES {
        let state = root.join("var/lib").join(package);
        std::fs::create_dir_all(state.join("spool")).expect("mkdir");
        std::fs::write(state.join("state.json"), "{}").expect("write");
    }

    dpkg(&root, &["--purge", "domesday-agent", "domesday-collector"]);
    let after = tree(&root);
    for gone in ["etc/domesday/", "var/lib/domesday-agent/", "var/lib/domesday-collector/", "usr/bin/domesday-agent"] {
        assert!(!after.contains(gone), "purge left {gone}");
    }
    // Only dpkg's records and the system users (passwd, group, shadow and their backups) may differ.
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|p| !p.starts_with("var/lib/dpkg/"))
        .filter(|p| {
            !["etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/.pwd.lock"].contains(&p.as_str())
        })
        .collect();
    assert!(left.is_empty(), "purge left behind: {left:?}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("domesday-agent:"), "the system user stays after purge (Debian policy)");
}

// ---------------------------------------------------------------- container images

/// A containers-storage configuration keeping images in `store` (vfs: no mounts),
/// never in the machine's own storage.
fn storage_conf(store: &Path) -> PathBuf {
    let conf = store.join("storage.conf");
    if !conf.exists() {
        let text =
            format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/root\"\n", store.display());
        std::fs::write(&conf, text).expect("storage.conf");
    }
    conf
}

fn buildah(store: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.env("CONTAINERS_STORAGE_CONF", storage_conf(store));
    cmd
}

#[test]
fn container_images_build_from_scratch_and_run() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = work.path().join("store");
    std::fs::create_dir_all(&store).expect("mkdir");
    let found = Command::new("buildah").arg("--version").output();
    assert!(found.is_ok_and(|o| o.status.success()), "buildah is missing: apt-get install buildah (./test.sh does)");
    for (name, user) in [("domesday-agent", "0:0"), ("domesday-collector", "65532:65532")] {
        // A stripped copy, as a release build would be (the debug binary is 130+ MB).
        let bin = work.path().join(name);
        let strip = run(Command::new("strip").arg("-o").arg(&bin).arg(binary(name)));
        assert!(strip.status.success(), "{}", text(&strip));
        let script = workspace_root().join("deploy/container/build-from-scratch.sh");
        let image = format!("localhost/{name}:test");
        let built = run(Command::new(&script)
            .env("CONTAINERS_STORAGE_CONF", storage_conf(&store))
            .arg(name)
            .arg(&bin)
            .arg(&image));
        assert!(built.status.success(), "{name} image build failed:\n{}", text(&built));

        let inspect = run(buildah(&store).args(["inspect", "--type", "image"]).arg(&image));
        assert!(inspect.status.success(), "{}", text(&inspect));
        let meta: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect JSON");
        let config = &meta["OCIv1"]["config"];
        assert_eq!(config["User"], user, "{name} image user");
        assert_eq!(config["Entrypoint"], serde_json::json!([format!("/usr/bin/{name}")]));

        let from = run(buildah(&store).args(["from", "--quiet"]).arg(&image));
        assert!(from.status.success(), "{}", text(&from));
        let ctr = String::from_utf8_lossy(&from.stdout).trim().to_string();
        let version = run(buildah(&store)
            .args(["run", "--isolation", "chroot", &ctr, "--"])
            .arg(format!("/usr/bin/{name}"))
            .arg("--version"));
        assert!(version.status.success(), "{name} --version in its image:\n{}", text(&version));
        assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
        // Minimal: there is no shell in the image.
        let shell = run(buildah(&store).args(["run", "--isolation", "chroot", &ctr, "--", "/bin/sh", "-c", "true"]));
        assert!(!shell.status.success(), "{name} image has a shell");
        run(buildah(&store).args(["rm", &ctr]));
    }
    run(buildah(&store).args(["rmi", "--all", "--force"]));
}

#[test]
fn containerfiles_are_multi_stage_with_the_expected_user() {
    for (name, user) in [("agent", "0:0"), ("collector", "65532:65532")] {
        let file = workspace_root().join(format!("deploy/container/Containerfile.{name}"));
        let text = std::fs::read_to_string(&file).expect("Containerfile");
        let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(froms.len(), 2, "{name}: a build stage and a runtime stage: {froms:?}");
        assert!(froms[1].contains("distroless"), "{name}: minimal runtime base: {}", froms[1]);
        let runtime = &text[text.find(froms[1]).expect("runtime stage")..];
        let users: Vec<&str> = runtime.lines().filter_map(|l| l.strip_prefix("USER ")).collect();
        assert_eq!(users, [user], "{name} runtime user");
        assert!(runtime.contains(&format!("ENTRYPOINT [\"/usr/bin/domesday-{name}\"]")), "{name} entrypoint");
    }
}
