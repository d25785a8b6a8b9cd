//! What the scripts create, on which scope, and that teardown removes it: each principal's grants
//! (KMS_KEY_NAME's too), resources created only when missing, all deleted by teardown.

use crate::harness::{KMS_KEY, METRICS, Sandbox, grants, set};

#[test]
fn setup_grants_each_principal_only_what_it_needs_on_one_resource() {
    let sandbox = Sandbox::new();
    let mut expected = vec![
        "pubsub-gcs-worker pubsub-subscriptions roles/pubsub.subscriber",
        "pubsub-gcs-worker storage-buckets projects/my-project/roles/pubsub_gcs_worker_object_writer",
        "service-PROJECT_NUMBER pubsub-topics roles/pubsub.publisher",
        "service-PROJECT_NUMBER pubsub-subscriptions roles/pubsub.subscriber",
    ];
    let run = sandbox.run("", "setup").ok();
    assert_eq!(grants(&run), set(&expected));
    // The custom role: create objects, read one object's metadata (to tell an object already
    // written from a refusal), nothing more.
    let permissions =
        run.value("gcloud iam roles create pubsub_gcs_worker_object_writer", "--permissions");
    assert_eq!(permissions, "storage.objects.create,storage.objects.get");
    // With the metrics export, the sidecar may write metrics: a project-level role, since Cloud
    // Monitoring has nothing finer to bind it on.
    expected.push("pubsub-gcs-worker projects roles/monitoring.metricWriter");
    assert_eq!(grants(&sandbox.run(METRICS, "setup").ok()), set(&expected));
}

/// With KMS_KEY_NAME, setup grants the project's Cloud Storage service agent encrypter/decrypter
/// on that key, and nothing more to anyone; without it, no KMS grant.
#[test]
fn kms_key_gets_the_storage_agent_as_encrypter() {
    let sandbox = Sandbox::new();
    let plain = grants(&sandbox.run("", "setup").ok());
    let run = sandbox.run(&format!("KMS_KEY_NAME={KMS_KEY}"), "setup").ok();
    let with_key = grants(&run);
    let added: Vec<&String> = with_key.difference(&plain).collect();
    let encrypter = "service-PROJECT_NUMBER kms-keys roles/cloudkms.cryptoKeyEncrypterDecrypter";
    assert_eq!(added, [encrypter]);
    assert_eq!(run.find("gcloud kms keys add-iam-policy-binding")[4], KMS_KEY);
    assert!(plain.iter().all(|g| !g.contains("kms")), "{plain:?}");
}

/// "group noun[ NAME]" of a create, deploy or delete command; the name without an email domain,
/// and none when the command reads it from a file or teardown looks it up (a DRY_RUN placeholder).
fn resource(c: &[String]) -> Option<String> {
    let verb = c.iter().position(|w| ["create", "deploy", "delete"].contains(&w.as_str()))?;
    let group = if c[1..verb] == ["run"] { "run services".into() } else { c[1..verb].join(" ") };
    let name = c[verb + 1..].iter().find(|w| !w.starts_with('-'));
    let name = name.map(|n| n.split('@').next().unwrap()).filter(|n| n.to_lowercase() == *n);
    Some(name.map_or(group.clone(), |name| format!("{group} {name}")))
}

/// Each resource is created only after a describe (or a list) found it missing, so a second run
/// creates nothing; teardown deletes everything the other scripts create.
#[test]
fn scripts_create_only_what_is_missing_and_teardown_deletes_it() {
    let sandbox = Sandbox::new();
    let mut created = Vec::new();
    for script in ["setup", "deploy", "monitoring", "autoscale"] {
        let commands = sandbox.run(METRICS, script).ok().gcloud();
        for (i, c) in commands.iter().enumerate().skip(1) {
            let Some(verb) = c.iter().position(|w| w == "create") else {
                continue;
            };
            let looked = ["describe", "list"].map(|v| [&c[..verb], &[v.to_string()]].concat());
            let before = &commands[i - 1];
            let looked_first = looked.iter().any(|l| before.starts_with(l));
            assert!(c[1] == "beta" || looked_first, "{c:?} after {before:?}");
        }
        let again = sandbox.run(&format!("{METRICS}\nDRY_RUN_EXISTS=1"), script).ok().gcloud();
        let creates = again.iter().filter(|c| c[1] != "beta" && c.contains(&"create".into()));
        assert_eq!(creates.count(), 0, "deploy/{script} run again creates something");
        created.extend(
            commands.iter().filter(|c| c[1] != "beta" || c[2] == "run").filter_map(|c| resource(c)),
        );
    }
    let teardown = sandbox.run(METRICS, "teardown --yes").ok().gcloud();
    let deleted: Vec<String> = teardown.iter().filter_map(|c| resource(c)).collect();
    let gone = |r: &String| {
        let prefix = |a: &String, b: &String| a.starts_with(&format!("{b} "));
        deleted.iter().any(|d| d == r || prefix(r, d) || prefix(d, r))
    };
    let missing: Vec<_> = created.iter().filter(|r| !gone(r)).collect();
    assert!(missing.is_empty(), "teardown does not delete {missing:?}");
    sandbox.run("", "teardown --yes --purge-bucket").ok().find("gcloud storage rm --recursive");
}
