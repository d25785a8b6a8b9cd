//! What `gcloud builds submit` uploads for the image build: no secrets, no build output.

use crate::harness::{Sandbox, read, uploaded, words};

#[test]
fn gcloudignore_keeps_secrets_and_build_output_out() {
    // What `gcloud builds submit` would upload, for a stand-in tree with the repo's ignore files.
    let sandbox = Sandbox::new();
    for file in words(".gcloudignore .dockerignore Dockerfile Cargo.toml Cargo.lock") {
        sandbox.write(&format!("tree/{file}"), &read(&file));
    }
    let stand_ins = "src/main.rs src/lib.rs benches/name_render.rs testkit/Cargo.toml .env \
                     .env.local .git/config examples/local.rs target/release/pubsub-gcs-worker \
                     deploy/setup tests/deploy/main.rs .ci/run";
    for file in words(stand_ins) {
        sandbox.write(&format!("tree/{file}"), "x");
    }
    let listed = uploaded(&sandbox, &sandbox.path().join("tree"));
    // The build reads testkit's manifest (a workspace member), not its sources; cargo wants the
    // file of every target the manifest declares, benches/ included.
    let expected = ".dockerignore Cargo.lock Cargo.toml Dockerfile benches/name_render.rs \
                    src/lib.rs src/main.rs testkit/Cargo.toml";
    assert_eq!(listed, words(expected).into_iter().collect());
    assert!(read(".gitignore").lines().any(|l| l.trim() == ".env"), "git ignores .env");
}
