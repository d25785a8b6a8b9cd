//! deploy/autoscale: the autoscaler scales this pool on its subscription's backlog, with grants on
//! this pool only, and `off` hands the pool back to INSTANCES.

use crate::harness::{Sandbox, YAML_TO_JSON, flag, gcloud_python, grants, read, set};

#[test]
fn autoscale_scales_this_pool_on_its_backlog_with_grants_on_this_pool_only() {
    let sandbox = Sandbox::new();
    for bad in ["MAX_INSTANCES=0", "MIN_INSTANCES=5\nAUTOSCALE_MAX_INSTANCES=3", "TARGET_BACKLOG=0"]
    {
        sandbox.run(&format!("AUTOSCALE_{bad}"), "autoscale").refused("AUTOSCALE_");
    }
    let settings =
        "AUTOSCALE_MIN_INSTANCES=1\nAUTOSCALE_MAX_INSTANCES=4\nAUTOSCALE_TARGET_BACKLOG=2500";
    let run = sandbox.run(settings, "autoscale").ok();
    let expected = [
        "pubsub-gcs-worker-autoscaler iam-service-accounts roles/iam.serviceAccountUser",
        "pubsub-gcs-worker-autoscaler projects roles/monitoring.viewer",
        "pubsub-gcs-worker-autoscaler projects roles/parametermanager.parameterViewer",
    ];
    assert_eq!(grants(&run), set(&expected));
    // roles/run.developer goes into this worker pool's own IAM policy: read, edited, written.
    let pool = "https://run.googleapis.com/v2/projects/my-project/locations/us-central1/workerPools/pubsub-gcs-worker";
    let urls: Vec<String> = run.all("curl").into_iter().filter_map(|c| c.last().cloned()).collect();
    let read = format!("{pool}:getIamPolicy?options.requestedPolicyVersion=3");
    assert_eq!(urls, [read, format!("{pool}:setIamPolicy")]);
    let autoscaler =
        "serviceAccount:pubsub-gcs-worker-autoscaler@my-project.iam.gserviceaccount.com";
    assert!(run.stderr().contains(&format!("(add {autoscaler} in roles/run.developer)")), "{run}");

    // Its configuration names this pool and this subscription, with the env file's numbers.
    let version = run.find("gcloud parametermanager parameters versions create");
    let file = flag(&version, "--payload-data-from-file").unwrap();
    let config = gcloud_python(&sandbox, YAML_TO_JSON, &[file]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let object = &config["spec"]["scaledObjects"][0]["spec"];
    let pool = "projects/my-project/locations/us-central1/workerpools/pubsub-gcs-worker";
    assert_eq!(object["scaleTargetRef"]["name"], pool);
    assert_eq!([&object["minReplicaCount"], &object["maxReplicaCount"]], [1, 4]);
    let trigger = &object["triggers"][0];
    assert_eq!(trigger["type"], "gcp-pubsub");
    let subscription = "projects/my-project/subscriptions/pubsub-gcs-worker";
    assert_eq!(trigger["metadata"]["subscriptionName"], subscription);
    assert_eq!(trigger["metadata"]["value"], "2500", "KEDA's metadata values are strings");
    let env = run.value("gcloud run deploy pubsub-gcs-worker-autoscaler", "--set-env-vars");
    let config = format!("parameters/pubsub-gcs-worker-autoscaler/versions/{},", version[5]);
    assert!(env.contains(&config), "the autoscaler reads that version: {env}");

    // off: the autoscaler and its grant go, and the pool gets INSTANCES again.
    let off = sandbox.run("INSTANCES=2\nSCALING_FLAG=--scaling", "autoscale off").ok();
    off.find("gcloud run services delete pubsub-gcs-worker-autoscaler");
    assert!(off.stderr().contains(&format!("(remove {autoscaler} in roles/run.developer)")));
    assert_eq!(off.value("gcloud beta run worker-pools update", "--scaling"), "2");
}

/// deploy/autoscale edits the worker pool's IAM policy itself: one member of one role, the rest
/// (other members and roles, conditional bindings, the etag) as it was.
#[test]
fn the_pool_policy_edit_changes_one_member_of_one_role() {
    let sandbox = Sandbox::new();
    let lib = read("deploy/lib.sh");
    let edit = lib.split("EDIT_POLICY='").nth(1).and_then(|c| c.split("\n'").next()).unwrap();
    let before = r#"{"etag": "E", "bindings": [
        {"role": "roles/run.developer", "members": ["user:x"]},
        {"role": "roles/run.developer", "members": ["user:y"], "condition": {"title": "t"}},
        {"role": "roles/run.viewer", "members": ["user:z"]}]}"#;
    let after = before.replace(r#"["user:x"]"#, r#"["user:x", "serviceAccount:a"]"#);
    let run = |policy: &str, action: &str| -> serde_json::Value {
        let file = sandbox.write("policy.json", policy);
        let code = format!("del sys.argv[1]; sys.stdin = open({:?})\n{edit}", file);
        let args = [action, "serviceAccount:a", "roles/run.developer"];
        let out: serde_json::Value =
            serde_json::from_str(&gcloud_python(&sandbox, &code, &args)).unwrap();
        out["policy"].clone()
    };
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(run(before, "add"), parse(&after));
    assert_eq!(run(&after, "add"), parse(&after), "adding twice");
    assert_eq!(run(&after, "remove"), parse(before));
    let alone = r#"[{"role": "roles/run.developer", "members": ["serviceAccount:a"]}]"#;
    assert_eq!(run(r#"{"etag": "E"}"#, "add")["bindings"], parse(alone));
}
