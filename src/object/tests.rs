use super::*;

fn message(id: &str, seconds: i64, nanos: i32, data: &[u8]) -> Message {
    Message::new()
        .set_message_id(id)
        .set_publish_time(Timestamp::new(seconds, nanos).expect("valid timestamp"))
        .set_data(bytes::Bytes::copy_from_slice(data))
}

fn spec(m: &Message, settings: &ObjectSettings) -> ObjectSpec {
    let names = NameTemplate::parse("{message_id}.{ext}", "").expect("valid template");
    let names = if settings.gzip { names.gzipped().expect("valid") } else { names };
    ObjectSpec::for_message(m, &names, settings, "s", None)
}

#[test]
fn the_name_comes_from_the_template_and_the_content_type_from_the_data() {
    let names = NameTemplate::parse("{subscription}/{attributes.kind}/{message_id}.{ext}", "in/");
    let names = names.expect("valid template");
    let m = message("42", 0, 0, "héllo ✓".as_bytes()).set_attributes([("kind", "a b")]);
    let detect = ObjectSettings::default();
    let spec = ObjectSpec::for_message(&m, &names, &detect, "projects/p/subscriptions/s", None);
    assert_eq!((spec.name.as_str(), spec.content_type.as_str()), ("in/s/a%20b/42.txt", TEXT));
    let empty = message("2", 0, 0, b"");
    assert_eq!(ObjectSpec::for_message(&empty, &names, &detect, "s", None).content_type, TEXT);
    let binary = message("3", 0, 0, &[0xff, 0xfe, 0x00, 0x80]);
    let spec = ObjectSpec::for_message(&binary, &names, &detect, "s", None);
    assert_eq!((spec.name.as_str(), spec.content_type.as_str()), ("in/s//3.bin", BINARY));
    assert!(!spec.is_text());
    // A redelivery has another delivery attempt but the same name.
    let again = ObjectSpec::for_message(&binary, &names, &detect, "s", Some(5));
    assert_eq!(again.name, spec.name);
    // Nothing but the settings asked for is set.
    assert_eq!((spec.gzip, spec.custom_time), (false, None));
}

#[test]
fn the_content_type_is_fixed_or_a_valid_attribute_or_its_fallback() {
    let settings = |value: &str| ObjectSettings {
        content_type: ContentType::parse(value).expect(value),
        ..ObjectSettings::default()
    };
    let json = message("1", 0, 0, b"{}");
    assert_eq!(spec(&json, &settings("application/json")).content_type, "application/json");
    let by_attribute = settings("{attributes.type|application/json}");
    let typed = |value: &str| json.clone().set_attributes([("type", value)]);
    let content_type = |m: &Message| spec(m, &by_attribute).content_type;
    assert_eq!(content_type(&typed("text/csv; charset=utf-8")), "text/csv; charset=utf-8");
    assert_eq!(content_type(&json), "application/json", "no attribute: the fallback");
    for bad in ["", "csv", "text/csv\r\nX-Evil: 1", "a/b/c", "text /csv", &"x".repeat(300)] {
        assert_eq!(content_type(&typed(bad)), "application/json", "{bad:?}");
    }
    // No fallback: today's choice by the data.
    let binary = message("2", 0, 0, &[0xff]).set_attributes([("type", "nope")]);
    assert_eq!(spec(&binary, &settings("{attributes.type}")).content_type, BINARY);
    for bad in ["json", "{attributes.}", "{attributes.t|bad}", "{attributes.t", "a/b\n"] {
        assert_eq!(ContentType::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn gzip_and_custom_time_change_only_the_ext_the_encoding_and_the_time() {
    let m = message("7", 1_700_000_000, 5, b"{\"a\":1}");
    let plain = spec(&m, &ObjectSettings::default());
    let settings = ObjectSettings { gzip: true, custom_time: true, ..Default::default() };
    let stored = spec(&m, &settings);
    assert_eq!((plain.name.as_str(), stored.name.as_str()), ("7.txt", "7.txt.gz"));
    assert!(stored.gzip);
    assert_eq!(stored.custom_time, m.publish_time);
    assert_eq!((&stored.metadata, &stored.content_type), (&plain.metadata, &plain.content_type));
}

#[test]
fn gzip_inflates_to_the_same_bytes() {
    use std::io::Read as _;
    let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    let zipped = gzip(&data).expect("gzip into memory");
    assert!(zipped.len() < data.len() / 2, "{} of {} bytes", zipped.len(), data.len());
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(zipped.as_slice()).read_to_end(&mut inflated).expect("inflate");
    assert_eq!(inflated, data);
    assert_eq!(gzip(&data).expect("again"), zipped, "the same bytes each time");
}

#[test]
fn metadata_traces_the_object_to_its_message() {
    let m = message("42", 1_700_000_000, 5_000_000, b"x").set_attributes([
        ("origin", "test"),
        ("message_id", "spoofed"),
        ("Subscription", "x"),
    ]);
    let md = metadata(&m, "projects/p/subscriptions/s", Some(3));
    let want: BTreeMap<String, String> = [
        ("message_id", "42"),
        ("publish_time", "2023-11-14T22:13:20.005Z"),
        ("delivery_attempt", "3"),
        ("subscription", "projects/p/subscriptions/s"),
        ("origin", "test"),
        ("attribute_message_id", "spoofed"),
        ("attribute_Subscription", "x"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(md, want);
    assert!(!metadata(&m, "s", None).contains_key("delivery_attempt"));
}

#[test]
fn oversized_attributes_are_omitted_and_counted() {
    let big = "v".repeat(1000);
    let attributes: Vec<(String, String)> =
        (0..20).map(|i| (format!("k{i:02}"), big.clone())).collect();
    let m = message("1", 0, 0, b"x").set_attributes(attributes);
    let md = metadata(&m, "s", None);
    let size: usize = md.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(size <= METADATA_LIMIT, "size {size}");
    let kept = md.keys().filter(|k| k.starts_with('k')).count();
    assert_eq!(md["attributes_omitted"], (20 - kept).to_string());
    assert!(kept >= 7, "kept {kept}");
}

#[test]
fn every_attribute_keeps_a_key_of_its_own() {
    let m = message("7", 0, 0, b"x").set_attributes([
        ("message_id", "a"),
        ("attribute_message_id", "b"),
        ("Attribute_Message_ID", "c"),
        ("attribute_attribute_message_id", "d"),
        ("app/version", "e"),
    ]);
    let md = metadata(&m, "s", None);
    let values: std::collections::BTreeSet<&str> = md.values().map(String::as_str).collect();
    for value in ["a", "b", "c", "d", "e"] {
        assert!(values.contains(value), "{value} lost: {md:?}");
    }
    assert_eq!(md["message_id"], "7");
    assert!(!md.contains_key("attributes_omitted"));
}

#[test]
fn a_hundred_attributes_all_become_entries() {
    let attributes: Vec<(String, String)> =
        (0..100).map(|i| (format!("k{i:03}"), "v".to_string())).collect();
    let m = message("1", 0, 0, b"x").set_attributes(attributes);
    let md = metadata(&m, "s", Some(1));
    assert_eq!(md.keys().filter(|k| k.starts_with('k')).count(), 100);
    assert!(!md.contains_key("attributes_omitted"));
}

proptest::proptest! {
    /// Two attributes never share a metadata key, nor take one of the worker's own.
    #[test]
    fn metadata_keys_are_one_to_one(
        a in "(?i)(attribute_){0,2}(message_id|subscription|x|/|)",
        b in "(?i)(attribute_){0,2}(message_id|subscription|x|/|)",
    ) {
        proptest::prop_assert!(!RESERVED_KEYS.contains(&metadata_key(&a).as_ref()));
        proptest::prop_assert_eq!(a == b, metadata_key(&a) == metadata_key(&b));
    }
}
