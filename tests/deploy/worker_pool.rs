//! What deploy/deploy gives the worker pool: exactly the worker's variables of the env file, and
//! with HEALTH_PORT the startup and liveness probes (by the deploy's flags, or by a replace with
//! the probes edited in), with METRICS_EXPORT the metrics sidecar.

use crate::harness::{METRICS, Sandbox, ScriptRun, TEMPLATE, YAML_TO_JSON};
use crate::harness::{flag, gcloud_python, help, json, read, words};
use pubsub_gcs_worker::config::{EMULATOR_VARIABLES, VARIABLES};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;

/// The worker pool gets exactly the worker's variables of the env file: every variable the worker
/// reads but the emulator ones, from the file only, byte for byte as gcloud reads the file.
#[test]
fn the_worker_pool_gets_exactly_the_worker_variables_of_the_env_file() {
    let sandbox = Sandbox::new();
    // .env.example sets every one of them (some empty), so all are passed.
    let env = deployed_env(&sandbox, &sandbox.run("", "deploy").ok());
    let keys: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    let worker = VARIABLES.into_iter().filter(|v| !EMULATOR_VARIABLES.contains(v));
    assert_eq!(keys, worker.collect());

    // Emulator variables are not passed even when set; variables missing from the file are not
    // passed (the worker uses its defaults), and the calling shell's values never leak in.
    let example: String = read(".env.example")
        .lines()
        .filter(|l| !l.starts_with("RUST_LOG="))
        .map(|l| l.strip_prefix("# ").filter(|l| l.contains("_EMULATOR_HOST=")).unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let prefix = "OBJECT_PREFIX=\"it's: a/prefix \\\"x\\\" \"\n";
    let custom = format!("{example}{prefix}OBJECT_NAME='{TEMPLATE}'\n");
    let env_file = sandbox.write("custom.env", &custom);
    let inherited = [("RUST_LOG", "trace"), ("LOG_FORMAT", "text")];
    let run = sandbox.run_with(&env_file, &["deploy"], &inherited).ok();
    let env = deployed_env(&sandbox, &run);
    for var in EMULATOR_VARIABLES {
        assert!(!env.contains_key(var), "{var} passed to the worker pool");
        assert!(run.stderr().contains(&format!("{var} is set")), "a note says so");
    }
    assert!(!env.contains_key("RUST_LOG"), "not in the env file, not passed");
    assert_eq!(env["LOG_FORMAT"], "auto", "the env file wins over the calling shell");
    assert_eq!(env["OBJECT_PREFIX"], "it's: a/prefix \"x\" ");
    assert_eq!(env["OBJECT_NAME"], TEMPLATE, "{{, }}, %, |, : and / intact");
}

/// The --env-vars-file deploy/deploy wrote, as gcloud's own YAML loader reads it.
fn deployed_env(sandbox: &Sandbox, run: &ScriptRun) -> BTreeMap<String, String> {
    let file = run.value("gcloud beta run worker-pools deploy", "--env-vars-file");
    serde_json::from_str(&gcloud_python(sandbox, YAML_TO_JSON, &[&file])).expect("a YAML map")
}

/// With HEALTH_PORT, deploy adds the startup and liveness probes when this gcloud has the flags,
/// and otherwise says how to add them. METRICS_EXPORT adds the sidecar, and needs HEALTH_PORT=8080.
#[test]
fn health_port_wires_probes_and_metrics_export_adds_the_sidecar() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(METRICS, "deploy").ok();
    let deploy = run.find("gcloud beta run worker-pools deploy");
    if help(&sandbox, "deploy").contains("--liveness-probe") {
        let probe = flag(&deploy, "--liveness-probe").expect("liveness probe");
        assert!(probe.contains("httpGet.path=/healthz/live,httpGet.port=8080"));
        let probe = flag(&deploy, "--startup-probe").expect("startup probe");
        assert!(probe.contains("httpGet.path=/healthz/startup,httpGet.port=8080"));
    } else {
        // The pool is read after the deploy and replaced with the probes added.
        let replace = run.find("gcloud beta run worker-pools replace");
        let pool = pool_json(&sandbox, &replace[5]);
        let worker = &pool["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(worker["startupProbe"]["httpGet"]["path"], "/healthz/startup");
        assert_eq!(worker["livenessProbe"]["httpGet"]["port"], 8080);
        // The last of each: with the sidecar, deploy also describes the pool before the deploy.
        let at = |prefix: &str| run.commands.iter().rposition(|c| c.starts_with(&words(prefix)));
        let (deploy, describe) = (
            at("gcloud beta run worker-pools deploy"),
            at("gcloud beta run worker-pools describe"),
        );
        assert!(deploy < describe && describe < at("gcloud beta run worker-pools replace"));
    }
    // The worker's flags follow --container=worker; the sidecar starts after the worker.
    let at = |word: &str| deploy.iter().position(|w| w == word).expect(word);
    let (worker, sidecar) = (at("--container=worker"), at("--container=collector"));
    assert!(flag(&deploy[worker..sidecar], "--env-vars-file").is_some());
    assert!(flag(&deploy[sidecar..], "--image").unwrap().contains("/cloud-run-gmp-sidecar:"));
    assert_eq!(flag(&deploy[sidecar..], "--depends-on"), Some("worker"));
    // Without the export: one container, and a sidecar of an earlier deploy goes.
    let plain = sandbox.run("", "deploy").ok().find("gcloud beta run worker-pools deploy");
    assert_eq!(flag(&plain, "--remove-containers"), Some("collector"));
    assert_eq!(flag(&plain, "--container"), None);

    let export = "METRICS_EXPORT=managed-prometheus";
    for (extra, why) in [
        (export.to_string(), "HEALTH_PORT=8080"),
        (format!("{export}\nHEALTH_PORT=9090"), "HEALTH_PORT=8080"),
        ("METRICS_EXPORT=statsd\nHEALTH_PORT=8080".into(), "METRICS_EXPORT must be"),
    ] {
        for script in ["setup", "deploy", "monitoring"] {
            sandbox.run(&extra, script).refused(why);
        }
    }
}

/// For each file argument, why gcloud's `worker-pools replace` would refuse it: decoded as it
/// decodes it, into the Cloud Run Admin API v1 `WorkerPool` with no field that type does not know.
const DECODE_POOL: &str = r#"
from googlecloudsdk.api_lib.util import messages as messages_util
from googlecloudsdk.core import yaml
from googlecloudsdk.generated_clients.apis.run.v1 import run_v1_messages as v1
for name in sys.argv[2:]:
    try:
        messages_util.DictToMessageWithErrorCheck(yaml.load_path(name), v1.WorkerPool)
    except Exception as e:
        print(name, "cannot decode: %s" % e)
"#;

/// The worker pool file `path` as JSON, after checking that it decodes as gcloud's WorkerPool.
fn pool_json(sandbox: &Sandbox, path: &str) -> serde_json::Value {
    let problems = gcloud_python(sandbox, DECODE_POOL, &[path]);
    assert_eq!(problems, "", "{}", fs::read_to_string(path).unwrap());
    json(path)
}

/// The probes edit keeps the pool as read, less what describe --format=export leaves out, and
/// puts the probes on the worker's container (not the sidecar); the result decodes as gcloud's
/// WorkerPool with no unknown field, while a bogus field is caught.
#[test]
fn the_probes_edit_adds_probes_to_the_worker_container_only() {
    let sandbox = Sandbox::new();
    let lib = read("deploy/lib.sh");
    let edit = lib.split("ADD_PROBES='").nth(1).and_then(|c| c.split("\n'").next()).unwrap();
    let described = serde_json::json!({
        "apiVersion": "run.googleapis.com/v1", "kind": "WorkerPool",
        "metadata": {
            "name": "pool", "namespace": "123", "uid": "u", "generation": 4,
            "resourceVersion": "r", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"cloud.googleapis.com/location": "us-central1"},
            "annotations": {"run.googleapis.com/launch-stage": "BETA",
                            "run.googleapis.com/operation-id": "op", "serving.knative.dev/creator": "me"}
        },
        "spec": {"template": {
            "metadata": {"name": "pool-00004-abc", "annotations": {"run.googleapis.com/scalingMode": "manual"}},
            "spec": {"serviceAccountName": "sa@p.iam.gserviceaccount.com", "containers": [
                {"name": "worker", "image": "i", "env": [{"name": "BUCKET_NAME", "value": "b"}],
                 "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}},
                {"name": "collector", "image": "gmp"}
            ]}
        }},
        "status": {"observedGeneration": 4, "conditions": [{"type": "Ready", "status": "True"}]}
    });
    let startup = "httpGet.path=/healthz/startup,httpGet.port=8080,periodSeconds=2,timeoutSeconds=1,failureThreshold=30";
    let liveness = "httpGet.path=/healthz/live,httpGet.port=8080,periodSeconds=30,timeoutSeconds=5,failureThreshold=3";
    let input = sandbox.write("described.json", &described.to_string());
    let code = format!("sys.stdin = open({input:?}); del sys.argv[1]\n{edit}");
    let edited = gcloud_python(&sandbox, &code, &[startup, liveness]);
    let path = sandbox.write("pool.yaml", &edited);
    let pool = pool_json(&sandbox, path.to_str().unwrap());

    let mut want = described.clone();
    want.as_object_mut().unwrap().remove("status");
    let meta = want["metadata"].as_object_mut().unwrap();
    for key in ["uid", "generation", "resourceVersion", "creationTimestamp"] {
        meta.remove(key);
    }
    let annotations = meta["annotations"].as_object_mut().unwrap();
    annotations.retain(|k, _| k == "run.googleapis.com/launch-stage");
    let template = &mut want["spec"]["template"];
    template["metadata"].as_object_mut().unwrap().remove("name");
    template["spec"]["containers"][0]["startupProbe"] = serde_json::json!({
        "httpGet": {"path": "/healthz/startup", "port": 8080},
        "periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 30});
    template["spec"]["containers"][0]["livenessProbe"] = serde_json::json!({
        "httpGet": {"path": "/healthz/live", "port": 8080},
        "periodSeconds": 30, "timeoutSeconds": 5, "failureThreshold": 3});
    assert_eq!(pool, want);

    let mut bad = pool.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["bogusField"] = 1.into();
    let bad = sandbox.write("bad.yaml", &bad.to_string());
    let report = gcloud_python(&sandbox, DECODE_POOL, &[bad.to_str().unwrap()]);
    assert!(report.contains("startupProbe.bogusField"), "{report}");
}
