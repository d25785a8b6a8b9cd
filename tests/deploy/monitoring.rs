//! deploy/monitoring: the dashboard and alert policies are valid Monitoring API messages, with the
//! env file's thresholds and channels.

use crate::harness::{METRICS, Sandbox, flag, gcloud_python, json};

/// The files deploy/monitoring sends decode as the Monitoring API's own message types as shipped
/// with gcloud (dashboards v1, alert policies v3) with no field those types do not know, while a
/// bogus field or enum value is caught; thresholds and channels come from the env file.
#[test]
fn dashboard_and_alert_policies_are_monitoring_api_messages() {
    let sandbox = Sandbox::new();
    let channels = "ALERT_NOTIFICATION_CHANNELS='42, projects/my-project/notificationChannels/43'";
    let extra =
        format!("{METRICS}\nALERT_OLDEST_UNACKED_SECS=900\nALERT_NACK_MINUTES=7\n{channels}");
    let run = sandbox.run(&extra, "monitoring").ok();
    let dashboard = run.value("gcloud monitoring dashboards create", "--config-from-file");
    let creates = run.all("gcloud alpha monitoring policies create");
    let policies: Vec<&str> =
        creates.iter().map(|c| flag(c, "--policy-from-file").unwrap()).collect();
    assert_eq!(policies.len(), 3, "alerts: oldest unacked, dead letters, nacks");

    let mut bad = json(&dashboard);
    let chart = &mut bad["mosaicLayout"]["tiles"][3]["widget"]["xyChart"];
    chart["bogusField"] = 1.into();
    chart["dataSets"][1]["plotType"] = "BOGUS".into();
    let bad = sandbox.write("bad.json", &bad.to_string());
    let mut args = vec![format!("dashboard={dashboard}"), format!("dashboard={}", bad.display())];
    args.extend(policies.iter().map(|p| format!("policy={p}")));
    let report =
        gcloud_python(&sandbox, VALIDATE, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let bad = format!("{} .mosaicLayout.tiles[3].widget.xyChart", bad.display());
    let expected = format!("{bad}.bogusField\n{bad}.dataSets[1].plotType");
    assert_eq!(report.trim(), expected, "only the bogus fields are reported");

    let policy =
        |label: &str| policies.iter().map(|p| json(p)).find(|p| p["userLabels"]["policy"] == label);
    let oldest = policy("oldest-unacked").unwrap();
    assert_eq!(oldest["conditions"][0]["conditionThreshold"]["thresholdValue"], 900);
    let nacks = policy("nacks").unwrap();
    assert_eq!(nacks["conditions"][0]["conditionPrometheusQueryLanguage"]["duration"], "420s");
    let channels = ["42", "43"].map(|id| format!("projects/my-project/notificationChannels/{id}"));
    assert_eq!(nacks["notificationChannels"], serde_json::json!(channels));
    // Without the metrics export there is no nack alert: it could never fire.
    let run = sandbox.run("", "monitoring").ok();
    assert_eq!(run.all("gcloud alpha monitoring policies create").len(), 2);
}

/// For each KIND=FILE argument, the fields of FILE the Monitoring API's message type does not know
/// (apitools keeps them, and unknown enum values, as "unrecognized fields"), or why decoding it
/// failed, as "FILE PATH" lines.
const VALIDATE: &str = r#"
from apitools.base.py import encoding
from googlecloudsdk.generated_clients.apis.monitoring.v1 import monitoring_v1_messages as v1
from googlecloudsdk.generated_clients.apis.monitoring.v3 import monitoring_v3_messages as v3
def unknown(message, path):
    found = [path + "." + name for name in message.all_unrecognized_fields()]
    for field in message.all_fields():
        value = message.get_assigned_value(field.name)
        for i, item in enumerate(value if field.repeated else [value]):
            if hasattr(item, "all_unrecognized_fields"):
                found += unknown(item, path + "." + field.name + ("[%d]" % i) * field.repeated)
    return found
for kind, name in (arg.split("=", 1) for arg in sys.argv[2:]):
    try:
        types = {"dashboard": v1.Dashboard, "policy": v3.AlertPolicy}
        problems = unknown(encoding.JsonToMessage(types[kind], open(name).read()), "")
    except Exception as e:
        problems = ["cannot decode: %r" % e]
    for problem in problems:
        print(name, problem)
"#;
