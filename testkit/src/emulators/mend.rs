//! A one-class mend for the Pub/Sub emulator (docs/testing.md, "The Pub/Sub emulator, mended"):
//! its jar (0.8.20) lacks `io.grpc.InternalStatus.asRuntimeException(Status, Metadata, boolean)`,
//! so a stream a client cancels stays open on its side for good, stranding messages and wearing
//! the emulator down. The mend is that class with both methods (`InternalStatus.java`), compiled
//! against the jar with the machine's JDK and first on the classpath (`java -cp MEND:JAR Main`);
//! only for a jar that lacks the method, and without a JDK the emulator runs unmended, warned.

use std::ffi::OsString;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const SOURCE: &str = include_str!("InternalStatus.java");
const MAIN: &str = "com.google.cloud.pubsub.testing.v1.Main";

/// The program and leading arguments that start the emulator whose launcher is `launcher`:
/// `java -cp MEND:JAR Main` when its jar needs the mend and it could be made, else the launcher.
pub fn emulator_command(launcher: &Path) -> (PathBuf, Vec<OsString>) {
    match mended_classpath(launcher) {
        Ok(Some(classpath)) => (jdk_tool("java"), vec!["-cp".into(), classpath, MAIN.into()]),
        Ok(None) => (launcher.to_path_buf(), Vec::new()),
        Err(e) => {
            eprintln!(
                "[testkit] the Pub/Sub emulator runs unmended ({e:#}): messages on a stream a \
                 client cancels are stranded"
            );
            (launcher.to_path_buf(), Vec::new())
        }
    }
}

/// `MEND:JAR`, or `None` when the jar has the method already.
fn mended_classpath(launcher: &Path) -> Result<Option<OsString>> {
    let lib = launcher.parent().and_then(Path::parent).context("launcher path")?.join("lib");
    let jar = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("cloud-pubsub-emulator-") && name.ends_with(".jar")
        })
        .with_context(|| format!("no cloud-pubsub-emulator jar in {}", lib.display()))?;
    let mut javap = Command::new(jdk_tool("javap"));
    let javap =
        javap.arg("-cp").arg(&jar).arg("io.grpc.InternalStatus").output().context("javap")?;
    let read = javap.status.success();
    anyhow::ensure!(read, "javap could not read io.grpc.InternalStatus from {}", jar.display());
    if String::from_utf8_lossy(&javap.stdout).contains(" asRuntimeException(") {
        return Ok(None);
    }
    let classes = compiled(&jar)?;
    let mut classpath = classes.into_os_string();
    classpath.push(":");
    classpath.push(&jar);
    Ok(Some(classpath))
}

/// The mend compiled against `jar`, once per jar and source on this machine: in a directory
/// named for both, filled under another name and then renamed, so concurrent test processes
/// never see half of it.
fn compiled(jar: &Path) -> Result<PathBuf> {
    let mut hasher = DefaultHasher::new();
    (jar, SOURCE).hash(&mut hasher);
    let dir = std::env::temp_dir().join(format!("pubsub-emulator-mend-{:016x}", hasher.finish()));
    if dir.join("io/grpc/InternalStatus.class").is_file() {
        return Ok(dir);
    }
    let work = dir.with_extension(format!("tmp{}", std::process::id()));
    let source = work.join("src/io/grpc/InternalStatus.java");
    std::fs::create_dir_all(source.parent().unwrap_or(&work))?;
    std::fs::write(&source, SOURCE)?;
    let out = Command::new(jdk_tool("javac"))
        .args(["-nowarn", "-d"])
        .arg(work.join("classes"))
        .arg("-cp")
        .arg(jar)
        .arg(&source)
        .output()
        .context("running javac")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&work);
        bail!("javac failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // Another process may have won the race: its copy is as good.
    let moved = std::fs::rename(work.join("classes"), &dir).is_ok() || dir.is_dir();
    anyhow::ensure!(moved, "could not move the compiled mend to {}", dir.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(dir)
}

/// A JDK tool from `JAVA_HOME`, as the emulator's launcher finds `java`, else from PATH.
fn jdk_tool(name: &str) -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin").join(name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
