//! The image builds: the Dockerfile's build stage, replayed without Docker from the context that
//! `gcloud builds submit` uploads, builds the binary the runtime stage copies (docs/testing.md).
//! Each `COPY` copies from the files `gcloud meta list-files-for-upload` lists (modification
//! times kept, as docker does) into an empty directory for the `WORKDIR`, each `RUN` runs with
//! `sh -c` there with this machine's tools; any other instruction is refused. The quick test runs
//! `cargo build` as `cargo check` in the workspace's target directory, which finds a file the
//! context lacks in seconds; the ignored test builds the release binary exactly as written.

use crate::harness::{Sandbox, describe, executable, read, repo_root, uploaded};
use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The build stage compiles from the uploaded context, and its release build makes the binary
/// the runtime stage copies and runs.
#[test]
fn the_image_build_stage_compiles_from_the_uploaded_context() {
    let (image, built) = build(Cargo::Check);
    let binary = built.host(&image.copied).expect("the runtime copies from the build's WORKDIR");
    let name = binary.file_name().unwrap().to_str().unwrap();
    let (release_dir, bins) = built.release_build();
    assert_eq!(binary, release_dir.join(name), "the runtime copies the release build's output");
    assert!(bins.contains(name), "the release build makes no {name} binary: it makes {bins:?}");
    assert_eq!(image.entrypoint, image.copied_to, "the image runs the binary it copies");
}

/// The build stage as written: a release build (fat LTO) whose binary is where the runtime
/// stage's `COPY --from` looks for it.
#[test]
#[ignore = "slow: a release build with fat LTO, about 5 min on 2 cores (.ci/run runs it)"]
fn the_image_build_stage_builds_the_binary_the_runtime_copies() {
    let (image, built) = build(Cargo::AsWritten);
    let binary = built.host(&image.copied).expect("the runtime copies from the build's WORKDIR");
    assert!(binary.is_file(), "the build stage leaves no {}", image.copied);
}

/// A context that leaves out a file the build needs fails the build, as docker would, naming it:
/// `.dockerignore` leaving out the declared benchmark's directory or one of the crate's modules,
/// or a declared example whose file the build stage does not copy (the dependency layer's
/// stand-ins do not stay for the real build).
#[test]
fn the_image_build_fails_without_a_file_it_needs() {
    let upload = Context::upload(&Sandbox::new(), &repo_root()).files;
    let module = upload.iter().filter_map(|f| f.strip_prefix("src/")).find(|name| {
        name.ends_with(".rs") && !name.contains('/') && !["lib.rs", "main.rs"].contains(name)
    });
    let module = format!("src/{}", module.expect("a module in src/"));
    let example = "\n[[example]]\nname = \"left_out\"\n";
    for (file, added, said) in [
        (".dockerignore", "benches", "benches"),
        (".dockerignore", module.as_str(), module.as_str()),
        ("Cargo.toml", example, "can't find `left_out` example"),
    ] {
        let sandbox = Sandbox::new();
        let context = Context::repo_changed(&sandbox, |tree| {
            let path = tree.join(file);
            fs::write(&path, fs::read_to_string(&path).unwrap() + "\n" + added + "\n").unwrap();
        });
        let replay = Image::parse(&read("Dockerfile")).replay(&context, Cargo::Check);
        let failure = replay.err().unwrap_or_else(|| panic!("it builds with {added:?} in {file}"));
        assert!(failure.said.contains(said), "{added:?} in {file}: {failure}");
    }
}

/// The Dockerfile and its build stage replayed from the repository's upload.
fn build(cargo: Cargo) -> (Image, Built) {
    let image = Image::parse(&read("Dockerfile"));
    let built = image.replay(&Context::upload(&Sandbox::new(), &repo_root()), cargo);
    (image, built.unwrap_or_else(|e| panic!("the build stage fails: {e}")))
}

// ---------------------------------------------------------------------------------------------

/// What the tests read of the Dockerfile: the build stage's instructions, and what the runtime
/// stage (the last) copies from it (`copied`, to `copied_to`) and runs (its `ENTRYPOINT`).
struct Image {
    build: Vec<Instruction>,
    copied: String,
    copied_to: String,
    entrypoint: String,
}

/// A Dockerfile instruction: its keyword (upper case) and arguments.
type Instruction = (String, String);

/// How the replay runs `cargo build`.
#[derive(Clone, Copy, PartialEq)]
enum Cargo {
    /// As `cargo check` without `--release`, in the workspace's target directory.
    Check,
    /// Every `RUN` exactly as written: a release build in the replayed tree.
    AsWritten,
}

impl Image {
    /// The Dockerfile's stages (a `\` at the end of a line continues it; comment and blank lines
    /// are dropped), then the build stage and the runtime's `COPY --from` and `ENTRYPOINT`.
    fn parse(dockerfile: &str) -> Image {
        let mut stages: Vec<(Option<String>, Vec<Instruction>)> = Vec::new();
        let mut instruction = String::new();
        for line in dockerfile.lines().filter(|l| !l.trim().is_empty()) {
            if line.trim_start().starts_with('#') {
                continue;
            } else if let Some(part) = line.trim_end().strip_suffix('\\') {
                instruction.push_str(part);
                continue;
            }
            instruction.push_str(line);
            let whole = std::mem::take(&mut instruction);
            let (keyword, args) = whole.trim().split_once(char::is_whitespace).unwrap();
            let (keyword, args) = (keyword.to_uppercase(), args.trim().to_string());
            if keyword == "FROM" {
                let words: Vec<&str> =
                    args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let name = match words[..] {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    _ => None,
                };
                stages.push((name, Vec::new()));
            } else {
                stages.last_mut().expect("FROM first").1.push((keyword, args));
            }
        }
        let runtime = &stages.last().expect("a FROM").1;
        let copy = runtime.iter().find(|(k, args)| k == "COPY" && args.starts_with("--from="));
        let copy = &copy.expect("the runtime stage copies from the build stage").1;
        let [from, copied, copied_to] = copy.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("COPY {copy}: one path from the build stage expected");
        };
        let from = from.strip_prefix("--from=").unwrap();
        let build = stages.iter().find(|(name, _)| name.as_deref() == Some(from));
        let build = build.unwrap_or_else(|| panic!("no stage named {from}")).1.clone();
        let entrypoint = runtime.iter().rev().find(|(k, _)| k == "ENTRYPOINT").expect("ENTRYPOINT");
        let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.1).expect("exec form");
        let copied_to = match copied_to.strip_suffix('/') {
            Some(dir) => format!("{dir}/{}", Path::new(copied).file_name().unwrap().display()),
            None => copied_to.to_string(),
        };
        Image { build, copied: copied.into(), copied_to, entrypoint: entrypoint[0].clone() }
    }

    /// Replays the build stage from `context`.
    fn replay(&self, context: &Context, cargo: Cargo) -> Result<Built, Failure> {
        let shim = tempfile::tempdir().unwrap();
        executable(&shim.path().join("cargo"), CARGO_SHIM);
        let tree = tempfile::tempdir().unwrap();
        let mut built = Built { tree, workdir: None, cwd: PathBuf::new(), shim, cargo: Vec::new() };
        for (keyword, args) in &self.build {
            match keyword.as_str() {
                "WORKDIR" => built.workdir(args),
                "COPY" => built.copy(context, args)?,
                "RUN" => built.run(args, cargo)?,
                other => panic!("the image test does not replay {other} (tests/deploy/image.rs)"),
            }
        }
        let log = fs::read_to_string(built.shim.path().join("cargo.log")).unwrap_or_default();
        built.cargo =
            log.lines().map(|l| l.split_whitespace().map(String::from).collect()).collect();
        Ok(built)
    }
}

/// The instruction that failed, and what it said (for a `RUN`, its exit status and output).
struct Failure {
    instruction: String,
    said: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.instruction, self.said)
    }
}

/// The replayed build stage: its file system below the first `WORKDIR` (`tree`), the current
/// `WORKDIR`, the directory of [`CARGO_SHIM`] and its log, and the arguments of each cargo
/// command its `RUN`s ran (by the quick replay), in order.
struct Built {
    tree: tempfile::TempDir,
    workdir: Option<PathBuf>,
    cwd: PathBuf,
    shim: tempfile::TempDir,
    cargo: Vec<Vec<String>>,
}

/// `cargo` for the quick replay: logs its arguments, and runs a build as a check.
const CARGO_SHIM: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$0.log"
PATH=${PATH#*:}
if [ "$1" = build ]; then
    shift
    for arg; do shift; [ "$arg" = --release ] || set -- "$@" "$arg"; done
    set -- check "$@"
fi
exec cargo "$@"
"#;

impl Built {
    fn workdir(&mut self, dir: &str) {
        self.cwd = self.cwd.join(dir);
        self.workdir.get_or_insert_with(|| self.cwd.clone());
    }

    /// Where the build stage's `path` is on this machine, if under the first `WORKDIR`.
    fn host(&self, path: &str) -> Option<PathBuf> {
        let rel = self.cwd.join(path).strip_prefix(self.workdir.as_ref()?).ok()?.to_path_buf();
        Some(fs::canonicalize(self.tree.path()).unwrap().join(rel))
    }

    /// `COPY SRC... DEST` from the context: a directory's files go below DEST, a file into DEST
    /// when it ends in `/` (or several sources are named), else to DEST.
    fn copy(&self, context: &Context, args: &str) -> Result<(), Failure> {
        assert!(!args.contains("--from"), "the image test replays no COPY --from in the build");
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let (dest, sources) = words.split_last().expect("COPY DEST");
        let into = dest.ends_with('/') || sources.len() > 1;
        let dest = self.host(dest).unwrap_or_else(|| panic!("COPY to {dest}: outside WORKDIR"));
        for source in sources {
            assert!(!source.contains(['*', '?', '[']), "the image test replays no glob: {source}");
            let source = source.trim_start_matches("./").trim_matches('/');
            let under =
                |file: &&String| file.strip_prefix(source).is_some_and(|r| r.starts_with('/'));
            let files: Vec<&String> =
                context.files.iter().filter(|f| *f == source || under(f)).collect();
            if files.is_empty() {
                let said = format!("{source} is not in the build context");
                return Err(Failure { instruction: format!("COPY {args}"), said });
            }
            for file in files {
                let to = match file.strip_prefix(&format!("{source}/")) {
                    Some(rel) => dest.join(rel),
                    None if into => dest.join(Path::new(file).file_name().unwrap()),
                    None => dest.clone(),
                };
                fs::create_dir_all(to.parent().unwrap()).unwrap();
                let from = context.root.join(file);
                fs::copy(&from, &to).unwrap();
                let modified = fs::metadata(&from).unwrap().modified().unwrap();
                fs::File::options().write(true).open(&to).unwrap().set_modified(modified).unwrap();
            }
        }
        Ok(())
    }

    /// `RUN SCRIPT` with `sh -c` in the current `WORKDIR`, with no variable of this environment
    /// but what finds the tools (a build's target directory, `RUSTFLAGS` and the like stay out).
    fn run(&self, script: &str, cargo: Cargo) -> Result<(), Failure> {
        assert!(!script.starts_with('['), "the image test replays no exec-form RUN: {script}");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).current_dir(self.host(".").expect("RUN after a WORKDIR"));
        let tools = ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"];
        cmd.env_clear().envs(tools.into_iter().filter_map(|v| Some((v, env::var_os(v)?))));
        if cargo == Cargo::Check {
            // The workspace's target directory, so the dependencies' checks are reused from one
            // run to the next; `cargo test` releases its lock on it before it runs test binaries.
            let path = env::var_os("PATH").unwrap_or_default();
            let path = [self.shim.path().into()].into_iter().chain(env::split_paths(&path));
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
            cmd.env("PATH", env::join_paths(path).unwrap()).env("CARGO_TARGET_DIR", target);
        }
        let out = cmd.output().expect("sh");
        if !out.status.success() {
            return Err(Failure { instruction: format!("RUN {script}"), said: describe(&out) });
        }
        Ok(())
    }

    /// Where the last `cargo build --release` puts its binaries, and the binaries it builds (its
    /// `--bin`s, or every binary of the package), as cargo in the replayed tree reads them.
    fn release_build(&self) -> (PathBuf, BTreeSet<String>) {
        let build = self.cargo.iter().rev().find(|args| args[0] == "build");
        let build = build.expect("the build stage runs `cargo build`");
        assert!(
            build.iter().any(|a| a == "--release"),
            "the last build is not --release: {build:?}"
        );
        let out = Command::new("cargo")
            .args(["metadata", "--no-deps", "--format-version=1", "--offline"])
            .current_dir(self.host(".").unwrap())
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("cargo");
        assert!(out.status.success(), "cargo metadata:\n{}", describe(&out));
        let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let release_dir = Path::new(metadata["target_directory"].as_str().unwrap()).join("release");
        let manifest = self.host("Cargo.toml").unwrap();
        let packages = metadata["packages"].as_array().unwrap().iter();
        let package =
            packages.filter(|p| Path::new(p["manifest_path"].as_str().unwrap()) == manifest);
        let targets = package.flat_map(|p| p["targets"].as_array().unwrap());
        let bins = targets.filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"));
        let selected: BTreeSet<&String> =
            build.windows(2).filter(|w| w[0] == "--bin").map(|w| &w[1]).collect();
        let bins = bins.map(|t| t["name"].as_str().unwrap().to_string());
        (release_dir, bins.filter(|b| selected.is_empty() || selected.contains(b)).collect())
    }
}

/// A build context: a directory and the files of it that are uploaded.
struct Context {
    root: PathBuf,
    files: BTreeSet<String>,
}

impl Context {
    /// The files of `root` that `gcloud builds submit` uploads.
    fn upload(sandbox: &Sandbox, root: &Path) -> Context {
        Context { root: root.into(), files: uploaded(sandbox, root) }
    }

    /// The repository's context and `.gcloudignore` (which leaves itself out), copied into the
    /// sandbox and changed by `change`, then listed again.
    fn repo_changed(sandbox: &Sandbox, change: impl FnOnce(&Path)) -> Context {
        let tree = sandbox.path().join("context");
        let mut files = Context::upload(sandbox, &repo_root()).files;
        files.insert(".gcloudignore".into());
        for file in files {
            fs::create_dir_all(tree.join(&file).parent().unwrap()).unwrap();
            fs::copy(repo_root().join(&file), tree.join(&file)).unwrap();
        }
        change(&tree);
        Context::upload(sandbox, &tree)
    }
}
