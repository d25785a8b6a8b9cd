//! Shutdown signals: SIGTERM (Cloud Run) or SIGINT (Ctrl-C), whichever comes first.
//!
//! The first signal starts a graceful drain. A second one means the operator does not want to
//! wait: the process exits at once, with the conventional `128 + signal` code.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Installed signal handlers.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers now, so that a signal arriving during start-up is not lost.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Waits for the next SIGTERM or SIGINT and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// Resolves on the first signal, then arms the second-signal exit.
    pub async fn first_then_exit_on_second(mut self) {
        let name = self.recv().await;
        tracing::info!(
            signal = name,
            "shutdown signal received; draining (send it again to exit at once)"
        );
        tokio::spawn(async move {
            let name = self.recv().await;
            tracing::warn!(signal = name, "second signal received; exiting at once");
            std::process::exit(exit_code(name));
        });
    }
}

fn exit_code(signal: &str) -> i32 {
    match signal {
        "SIGINT" => 130,
        _ => 143,
    }
}
