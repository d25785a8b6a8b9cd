//! Mends for three defects of the Pub/Sub emulator's jar (0.8.20; docs/testing.md, "The Pub/Sub
//! emulator, mended"), each a class compiled against the jar with the machine's JDK and put first
//! on the classpath (`java -cp MEND:JAR Main`):
//! - `InternalStatus.java`: the jar lacks `io.grpc.InternalStatus.asRuntimeException(Status,
//!   Metadata, boolean)`, so a stream a client cancels stays open on its side for good, stranding
//!   messages and wearing the emulator down;
//! - `MessageBacklog.java`: the task that redelivers messages after their retry-policy backoff
//!   dies of the first ack id that is no longer outstanding when it falls due, and with it every
//!   later backed-off redelivery of the subscription;
//! - `StreamingPullPusher.java`: a stream's pusher pulls 100 messages and sleeps 50 ms, whatever
//!   it got and whether or not its client reads, so one stream carries at most 2,000 messages a
//!   second (Pub/Sub's some 40,000 of 256 B) and leases what the client's flow control will not
//!   read yet.
//!
//! Each only for a jar that needs it; without a JDK the emulator runs unmended, warned.

use std::ffi::OsString;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const MAIN: &str = "com.google.cloud.pubsub.testing.v1.Main";

/// One class of the jar replaced.
struct Mend {
    /// The jar's class that `javap -p` reads to tell whether the jar needs the mend.
    inspect: &'static str,
    needed: fn(&str) -> bool,
    /// Where the source goes under the source root, and its text.
    source: (&'static str, &'static str),
    /// The compiled class the mend is, relative to the classpath root.
    class: &'static str,
    /// A compiled stub that must not shadow the jar's own class, deleted.
    stub: Option<&'static str>,
}

const MENDS: [Mend; 3] = [
    Mend {
        inspect: "io.grpc.InternalStatus",
        needed: |javap| !javap.contains(" asRuntimeException("),
        source: ("io/grpc/InternalStatus.java", include_str!("InternalStatus.java")),
        class: "io/grpc/InternalStatus.class",
        stub: None,
    },
    Mend {
        inspect: "com.google.cloud.pubsub.testing.v1.MessageBacklog",
        // The members the mend reaches: a jar without them is another jar.
        needed: |javap| {
            ["delivered;", "delayedMessagesByTime;", "void expireOutstandingMessages()"]
                .iter()
                .all(|member| javap.contains(member))
        },
        source: (
            "com/google/cloud/pubsub/testing/v1/MessageBacklog.java",
            include_str!("MessageBacklog.java"),
        ),
        class: "com/google/cloud/pubsub/testing/v1/MessageBacklog$ExpireOutstandingMessagesRunnable.class",
        stub: Some("com/google/cloud/pubsub/testing/v1/MessageBacklog.class"),
    },
    Mend {
        inspect: "com.google.cloud.pubsub.testing.v1.FakePubsubServer$StreamingPullPusher",
        // The pusher's own state, which the mend's constructor takes as the jar's does.
        needed: |javap| {
            [
                "terminationFuture;",
                "deadlineSecs;",
                "ackConfirmationsAggregator;",
                "responseBuilder()",
            ]
            .iter()
            .all(|member| javap.contains(member))
        },
        source: (
            "com/google/cloud/pubsub/testing/v1/FakePubsubServer.java",
            include_str!("StreamingPullPusher.java"),
        ),
        class: "com/google/cloud/pubsub/testing/v1/FakePubsubServer$StreamingPullPusher.class",
        stub: Some("com/google/cloud/pubsub/testing/v1/FakePubsubServer.class"),
    },
];

/// The program and leading arguments that start the emulator whose launcher is `launcher`:
/// `java -cp MEND:JAR Main` when its jar needs a mend and it could be made, else the launcher.
pub fn emulator_command(launcher: &Path) -> (PathBuf, Vec<OsString>) {
    match mended_classpath(launcher) {
        Ok(Some(classpath)) => (jdk_tool("java"), vec!["-cp".into(), classpath, MAIN.into()]),
        Ok(None) => (launcher.to_path_buf(), Vec::new()),
        Err(e) => {
            eprintln!(
                "[testkit] the Pub/Sub emulator runs unmended ({e:#}): messages on a stream a \
                 client cancels are stranded, and backed-off redeliveries may stop"
            );
            (launcher.to_path_buf(), Vec::new())
        }
    }
}

/// `MEND:JAR`, or `None` when the jar needs no mend.
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
    let mut needed = Vec::new();
    for mend in &MENDS {
        if (mend.needed)(&javap(&jar, mend.inspect)?) {
            needed.push(mend);
        }
    }
    if needed.is_empty() {
        return Ok(None);
    }
    let classes = compiled(&jar, &needed)?;
    let mut classpath = classes.into_os_string();
    classpath.push(":");
    classpath.push(&jar);
    Ok(Some(classpath))
}

/// What `javap -p` says of `class` in `jar`.
fn javap(jar: &Path, class: &str) -> Result<String> {
    let mut javap = Command::new(jdk_tool("javap"));
    let out = javap.arg("-p").arg("-cp").arg(jar).arg(class).output().context("javap")?;
    anyhow::ensure!(out.status.success(), "javap could not read {class} from {}", jar.display());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The mends compiled against `jar`, once per jar and sources on this machine: in a directory
/// named for them, filled under another name and then renamed, so concurrent test processes
/// never see half of it.
fn compiled(jar: &Path, mends: &[&Mend]) -> Result<PathBuf> {
    let mut hasher = DefaultHasher::new();
    jar.hash(&mut hasher);
    mends.iter().for_each(|mend| mend.source.hash(&mut hasher));
    let dir = std::env::temp_dir().join(format!("pubsub-emulator-mend-{:016x}", hasher.finish()));
    if mends.iter().all(|mend| dir.join(mend.class).is_file()) {
        return Ok(dir);
    }
    let work = dir.with_extension(format!("tmp{}", std::process::id()));
    let mut javac = Command::new(jdk_tool("javac"));
    // Java 8 class files, as the jar's, so the JVM checks no nest of the mend and the jar.
    javac.args(["-nowarn", "--release", "8", "-d"]).arg(work.join("classes")).arg("-cp").arg(jar);
    for (path, text) in mends.iter().map(|mend| mend.source) {
        let source = work.join("src").join(path);
        std::fs::create_dir_all(source.parent().unwrap_or(&work))?;
        std::fs::write(&source, text)?;
        javac.arg(source);
    }
    let out = javac.output().context("running javac")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&work);
        bail!("javac failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    for stub in mends.iter().filter_map(|mend| mend.stub) {
        std::fs::remove_file(work.join("classes").join(stub))
            .with_context(|| format!("removing the stub {stub}"))?;
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
