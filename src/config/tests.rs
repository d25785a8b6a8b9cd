use super::*;

/// The required variables, with `overrides` replacing or adding entries ("<unset>" removes).
fn config(overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let required = [("PROJECT_ID", "p"), ("SUBSCRIPTION_ID", "s"), ("BUCKET_NAME", "b-1")];
    let mut vars: HashMap<&str, &str> = required.into_iter().collect();
    vars.extend(overrides.iter().copied());
    vars.retain(|_, v| *v != "<unset>");
    Config::from_vars(vars.into_iter().map(|(k, v)| (k.into(), v.into())))
}

#[test]
#[rustfmt::skip]
fn defaults_apply_when_only_required_variables_are_set() {
    let secs = Duration::from_secs;
    let per_core = PerCore::here();
    let want = Config {
        subscription: "projects/p/subscriptions/s".into(), bucket: "b-1".into(),
        names: NameTemplate::default(), objects: ObjectSettings::default(),
        max_outstanding_messages: per_core.max_outstanding_messages,
        max_outstanding_bytes: per_core.max_outstanding_bytes,
        max_concurrent_writes: per_core.max_concurrent_writes, pull_streams: per_core.pull_streams,
        stream_idle: Some(secs(60)), max_lease_extension: secs(60), shutdown_timeout: secs(8),
        progress_interval: Some(secs(30)), log_format: LogFormat::Auto, log_filter: "info".into(),
        pubsub_endpoint: None, pubsub_emulator: None, storage_emulator: None, health_addr: None,
        write_timeout: secs(60), liveness_stall: secs(120), startup_check: true,
    };
    assert_eq!(config(&[]), Ok(want));
}

#[test]
#[rustfmt::skip]
fn values_are_trimmed_and_understood() {
    let c = config(&[
        ("PROJECT_ID", "<unset>"), ("SUBSCRIPTION_ID", "projects/o/subscriptions/sub\t"),
        ("BUCKET_NAME", " gs://my-bucket "), ("OBJECT_PREFIX", "in/"), ("LOG_FORMAT", " json"),
        ("PROGRESS_INTERVAL_SECS", "0"), ("HEALTH_PORT", "8080"),
        ("STORAGE_EMULATOR_HOST", "127.0.0.1:4443"), ("PULL_STREAMS", "32"),
        ("STREAM_IDLE_SECS", "0"),
    ]);
    let c = c.expect("valid: a full subscription path needs no PROJECT_ID");
    assert_eq!((c.pull_streams, c.stream_idle), (32, None));
    assert_eq!((c.subscription.as_str(), c.bucket.as_str()), ("projects/o/subscriptions/sub", "my-bucket"));
    assert_eq!(c.names.template(), "in/message_{publish_time}_{message_id}.{ext}");
    assert_eq!((c.progress_interval, c.log_format, c.startup_check), (None, LogFormat::Json, false));
    assert_eq!(c.health_addr, Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
}

#[test]
#[rustfmt::skip]
fn every_bad_variable_is_named_with_what_is_expected_in_one_line() {
    let problems = |vars: &[(&str, &str)]| config(vars).expect_err("invalid").0;
    let p = problems(&[("PROJECT_ID", " "), ("SUBSCRIPTION_ID", "<unset>"), ("BUCKET_NAME", "")]);
    assert_eq!(p, [
        "PROJECT_ID is not set (expected the Google Cloud project id, e.g. my-project)",
        "SUBSCRIPTION_ID is not set (expected a subscription id or projects/PROJECT/subscriptions/ID)",
        "BUCKET_NAME is not set (expected a bucket name, e.g. my-bucket)",
    ]);
    let p = problems(&[
        ("PROJECT_ID", "a/b"), ("SUBSCRIPTION_ID", "my sub"), ("BUCKET_NAME", "gs://"),
        ("OBJECT_NAME", "{attributes.x}"), ("MAX_CONCURRENT_WRITES", "lots"),
        ("MAX_LEASE_EXTENSION_SECS", "5"), ("LOG_FORMAT", "xml"), ("RUST_LOG", "info,[{"),
        ("HEALTH_HOST", "localhost"), ("STORAGE_EMULATOR_HOST", "ftp://x"), ("PULL_STREAMS", "0"),
    ]);
    assert_eq!(p, [
        r#"PROJECT_ID="a/b" is invalid (expected a project id, e.g. my-project)"#,
        r#"SUBSCRIPTION_ID="my sub" is invalid (expected a subscription id or projects/PROJECT/subscriptions/ID)"#,
        r#"BUCKET_NAME="gs://" is invalid (expected 3-222 lowercase letters, digits, -, _ or .)"#,
        r#"MAX_CONCURRENT_WRITES="lots" is invalid (expected a whole number from 1 to 10000)"#,
        r#"PULL_STREAMS="0" is invalid (expected a whole number from 1 to 32)"#,
        r#"MAX_LEASE_EXTENSION_SECS="5" is invalid (expected a whole number from 10 to 600)"#,
        r#"LOG_FORMAT="xml" is invalid (expected auto, json or text)"#,
        r#"RUST_LOG="info,[{" is invalid (expected tracing directives)"#,
        r#"HEALTH_HOST="localhost" is invalid (expected an IP address)"#,
        r#"STORAGE_EMULATOR_HOST="ftp://x" is invalid (expected http://host:port)"#,
        r#"OBJECT_NAME="{attributes.x}" has no {message_id}: two messages could get the same name and one would be acked without its object"#,
    ]);
    assert!(!ConfigError(p).to_string().contains('\n'), "one line");
}

#[test]
#[rustfmt::skip]
fn object_settings_and_the_pubsub_endpoint_are_read_and_checked() {
    let key = "projects/p/locations/us/keyRings/r/cryptoKeys/k";
    let c = config(&[
        ("OBJECT_CONTENT_TYPE", "{attributes.type|application/json}"), ("OBJECT_COMPRESSION", "gzip"),
        ("OBJECT_STORAGE_CLASS", "NEARLINE"), ("OBJECT_CACHE_CONTROL", "no-store"),
        ("OBJECT_CUSTOM_TIME", "publish_time"), ("KMS_KEY_NAME", key),
        ("PUBSUB_ENDPOINT", "us-east1-pubsub.googleapis.com"),
    ]).expect("valid");
    let want = ObjectSettings {
        content_type: ContentType::Attribute { name: "type".into(), fallback: Some("application/json".into()) },
        gzip: true, storage_class: Some("NEARLINE".into()), cache_control: Some("no-store".into()),
        custom_time: true, kms_key: Some(key.into()),
    };
    assert_eq!(c.objects, want);
    assert_eq!(c.names, NameTemplate::default().gzipped().expect("valid"), "{{ext}} says gzip");
    assert_eq!(c.pubsub_endpoint.as_deref(), Some("https://us-east1-pubsub.googleapis.com"));
    let c = config(&[("OBJECT_CONTENT_TYPE", "text/csv"), ("PUBSUB_ENDPOINT", "https://h:443/")]);
    let c = c.expect("valid");
    assert_eq!(c.objects.content_type, ContentType::Fixed("text/csv".into()));
    assert_eq!(c.pubsub_endpoint.as_deref(), Some("https://h:443"));

    let p = config(&[
        ("OBJECT_CONTENT_TYPE", "json"), ("OBJECT_COMPRESSION", "zstd"),
        ("OBJECT_STORAGE_CLASS", "nearline"), ("OBJECT_CACHE_CONTROL", "no-store\u{7}x"),
        ("OBJECT_CUSTOM_TIME", "now"), ("KMS_KEY_NAME", "k"), ("PUBSUB_ENDPOINT", "http://h/x"),
    ]).expect_err("invalid").0;
    let named: Vec<&str> = p.iter().map(|p| p.split('=').next().unwrap_or_default()).collect();
    assert_eq!(named, [
        "OBJECT_CONTENT_TYPE", "OBJECT_COMPRESSION", "OBJECT_STORAGE_CLASS",
        "OBJECT_CACHE_CONTROL", "OBJECT_CUSTOM_TIME", "KMS_KEY_NAME", "PUBSUB_ENDPOINT",
    ], "{p:?}");
    assert!(p[2].ends_with("(expected STANDARD, NEARLINE, COLDLINE or ARCHIVE)"), "{p:?}");
    assert!(p[5].contains("cryptoKeys"), "{p:?}");
}

#[test]
fn every_listed_variable_is_read_once_in_order() {
    let mut env = Env::default();
    env.config();
    assert_eq!(env.read, VARIABLES);
}

#[test]
fn messages_writes_and_streams_grow_with_the_cores_bytes_do_not() {
    let row = |d: PerCore| {
        let mib = d.max_outstanding_bytes >> 20;
        (d.pull_streams, d.max_outstanding_messages, mib, d.max_concurrent_writes)
    };
    let table: Vec<_> = [1, 2, 4, 8, 44].into_iter().map(PerCore::for_cores).map(row).collect();
    #[rustfmt::skip]
    assert_eq!(table, [
        (18, 2_000, 100, 1_024),
        (32, 4_000, 100, 2_048),
        (32, 8_000, 100, 4_096),
        (32, 16_000, 100, 8_192),
        (32, 88_000, 100, 10_000),
    ]);
    assert_eq!(PerCore::for_cores(0), PerCore::for_cores(1));
}
