use super::*;
use proptest::prelude::*;

/// Message 1234567890, published 2024-02-29T23:59:58.123456789Z, text, subscription `sub`.
fn fields(attributes: &HashMap<String, String>) -> NameFields<'_> {
    let publish_time = Some(time::macros::datetime!(2024-02-29 23:59:58.123456789 UTC));
    let (message_id, ordering_key, subscription_id) = ("1234567890", "", "sub");
    let text = true;
    NameFields { message_id, publish_time, attributes, ordering_key, subscription_id, text }
}

fn name(template: &str, fields: &NameFields<'_>) -> String {
    NameTemplate::parse(template, "").expect(template).render(fields)
}

fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn default_template_gives_the_names_of_earlier_versions() {
    let none = HashMap::new();
    let mut f = fields(&none);
    let default = NameTemplate::parse(DEFAULT_TEMPLATE, "in/").expect("valid");
    assert_eq!(default.render(&f), "in/message_20240229_235958_123456_1234567890.txt");
    f.text = false;
    assert_eq!(default.render(&f), "in/message_20240229_235958_123456_1234567890.bin");
    (f.message_id, f.publish_time, f.text) = ("7", None, true);
    assert_eq!(name(DEFAULT_TEMPLATE, &f), "message_00000000_000000_000000_7.txt");
    assert_eq!(NameTemplate::parse(DEFAULT_TEMPLATE, ""), Ok(NameTemplate::default()));
}

#[test]
fn each_token_renders() {
    let attrs = attributes(&[("task_type", "file_processing"), ("empty", "")]);
    let mut f = fields(&attrs);
    f.ordering_key = "k 1";
    #[rustfmt::skip]
    let cases = [
        ("{message_id}.{ext}", "1234567890.txt"),
        ("{subscription}/{ordering_key}/{message_id}", "sub/k%201/1234567890"),
        ("{publish_time}-{message_id}", "20240229_235958_123456-1234567890"),
        ("{publish_time:%Y/%m/%d/%H}/{message_id}", "2024/02/29/23/1234567890"),
        ("{publish_time:%G-W%V %s}/{message_id}", "2024-W09 1709251198/1234567890"),
        ("{attributes.task_type}/{message_id}", "file_processing/1234567890"),
        ("{attributes.missing}/{message_id}", "/1234567890"),
        ("{attributes.missing|unrouted}/{message_id}", "unrouted/1234567890"),
        ("{attributes.empty|unrouted}/{message_id}", "unrouted/1234567890"),
        ("{hash:2}/{message_id}", "c7/1234567890"),
        ("{{x}}_{message_id}_}}{{", "{x}_1234567890_}{"),
    ];
    for (template, want) in cases {
        assert_eq!(name(template, &f), want, "{template}");
    }
    f.publish_time = None;
    assert_eq!(name("{publish_time:%F}/{message_id}", &f), "1970-01-01/1234567890");
    // Gzipped bodies (`OBJECT_COMPRESSION=gzip`) say so in `{ext}`, text or not.
    let gzipped = |f: &NameFields<'_>| {
        let template = NameTemplate::parse("{message_id}.{ext}", "").expect("valid");
        template.gzipped().expect("valid").render(f)
    };
    assert_eq!(gzipped(&f), "1234567890.txt.gz");
    f.text = false;
    assert_eq!(gzipped(&f), "1234567890.bin.gz");
}

/// The recipes of docs/objects.md give the names it shows.
#[test]
#[rustfmt::skip]
fn readme_recipes() {
    let attrs = attributes(&[("task_type", "file_processing")]);
    let mut f = fields(&attrs);
    f.message_id = "17235098213456789";
    f.publish_time = Some(time::macros::datetime!(2026-11-27 09:15:00.123456 UTC));
    for (template, want) in [
        ("message_{publish_time}_{message_id}.{ext}", "message_20261127_091500_123456_17235098213456789.txt"),
        ("dt={publish_time:%Y-%m-%d}/{message_id}.{ext}", "dt=2026-11-27/17235098213456789.txt"),
        ("{attributes.task_type|unrouted}/{publish_time:%Y/%m/%d}/{message_id}.{ext}", "file_processing/2026/11/27/17235098213456789.txt"),
        ("{hash:2}/{publish_time}_{message_id}.{ext}", "1a/20261127_091500_123456_17235098213456789.txt"),
    ] {
        assert_eq!(name(template, &f), want, "{template}");
    }
}

#[test]
fn hash_is_sha256_of_the_message_id() {
    let none = HashMap::new();
    let mut f = fields(&none);
    // `printf %s "$id" | sha256sum | cut -c1-8`
    for (id, hash) in
        [("1", "6b86b273"), ("1234567890", "c775e7b7"), ("17235098213456789", "1afb2e1d")]
    {
        f.message_id = id;
        assert_eq!(name("{hash:8}/{message_id}", &f), format!("{hash}/{id}"));
        assert_eq!(name("{hash:1}{message_id}", &f), format!("{}{id}", &hash[..1]));
    }
}

#[test]
fn templates_that_could_lose_messages_or_make_bad_names_are_refused() {
    use TemplateError::*;
    let long = "x".repeat(400);
    let too_long = format!("{long}{{message_id}}");
    #[rustfmt::skip]
    let cases = [
        ("", "", Empty, "is empty"),
        ("{publish_time}.{ext}", "{message_id}", NoMessageId, "acked without its object"),
        ("{foo}{message_id}", "", UnknownToken("foo".into()), "unknown token {foo}"),
        ("{attributes}{message_id}", "", UnknownToken("attributes".into()), "unknown"),
        ("{attributes.}{message_id}", "", UnknownToken("attributes.".into()), "unknown"),
        ("{message_id", "", UnmatchedBrace { brace: '{', at: 0 }, "'{' at byte 0"),
        ("{message_id}}", "", UnmatchedBrace { brace: '}', at: 12 }, "'}' at byte 12"),
        ("{hash:}{message_id}", "", BadHashLength("".into()), "from 1 to 8"),
        ("{hash:x}{message_id}", "", BadHashLength("x".into()), "from 1 to 8"),
        ("{hash:9}{message_id}", "", BadHashLength("9".into()), "from 1 to 8"),
        ("{hash:+1}{message_id}", "", BadHashLength("+1".into()), "from 1 to 8"),
        ("{attributes.a|a/b}{message_id}", "", BadDefault("a/b".into()), "would change"),
        ("{attributes.a|..}{message_id}", "", BadDefault("..".into()), "would change"),
        ("a#{message_id}", "", ForbiddenCharacter('#'), "'#' in its text"),
        ("a\r\n{message_id}", "", ForbiddenCharacter('\r'), "control characters"),
        ("{message_id}", "a?", ForbiddenInPrefix('?'), "prefix"),
        ("../{message_id}", "", DotSegment("..".into()), "only \"..\""),
        ("{message_id}", "a/./", DotSegment(".".into()), "only \".\""),
        ("{ordering_key}./{message_id}", "", DotSegment(".".into()), "default"),
        ("{attributes.a}{message_id}", "", IdNotAlone, "a=12 and id 3"),
        ("{message_id}-{ordering_key}", "", IdNotAlone, "put a / between them"),
        ("{publish_time:%Y%m%d}_{message_id}", "", IdNotAlone, "varying width"),
        (&too_long, "", TooLong(528), "takes 528 bytes"),
        (&too_long, "in/{message_id}", TooLong(543), "takes 543 bytes"),
        ("{message_id}", ".well-known/acme-challenge/", ReservedStart { in_prefix: true }, "acme"),
        ("{attributes.a}/{message_id}", ".well-known/", ReservedStart { in_prefix: true }, "complete"),
        ("{message_id}", ".", ReservedStart { in_prefix: true }, "Cloud Storage refuses"),
        (".well-known/acme-challenge/{message_id}", "", ReservedStart { in_prefix: false }, "acme"),
        ("-known/acme-challenge/{message_id}", ".well", ReservedStart { in_prefix: true }, "acme"),
        ("{publish_time:.well-known/acme-challenge/%Y}/{message_id}", "", ReservedStart { in_prefix: false }, "acme"),
        (".well-known/acme-challenge{ordering_key}/{message_id}", "", ReservedStart { in_prefix: false }, "acme"),
    ];
    for (template, prefix, want, needle) in cases {
        let err = NameTemplate::parse(template, prefix).expect_err(template);
        assert!(err.to_string().contains(needle), "{template}: {err}");
        assert_eq!(err, want, "{template}");
    }
    for (format, needle) in [("", "empty"), ("%Q", "Q"), ("%n", "'\\n'"), ("%t", "'\\t'")] {
        let template = format!("{{publish_time:{format}}}{{message_id}}");
        let err = NameTemplate::parse(&template, "").expect_err(format);
        assert!(matches!(err, BadTimeFormat { .. }), "{format}: {err:?}");
        assert!(err.to_string().contains(needle), "{format}: {err}");
    }
    for ok in ["{attributes.a|d}./{message_id}", ".../{message_id}", "{hash:1}./{message_id}"] {
        assert!(NameTemplate::parse(ok, "").is_ok(), "{ok}");
    }
    for (ok, prefix) in
        [("{message_id}", ".well-known/x/"), ("a/.well-known/acme-challenge/{message_id}", "")]
    {
        assert!(NameTemplate::parse(ok, prefix).is_ok(), "{prefix}{ok}");
    }
    assert!(ReservedStart { in_prefix: true }.in_prefix() && ForbiddenInPrefix('#').in_prefix());
    assert!(!ReservedStart { in_prefix: false }.in_prefix() && !DotSegment(".".into()).in_prefix());
}

#[test]
fn hostile_values_are_encoded_and_capped() {
    let (long, capped) = ("é".repeat(1024), "%C3%A9".repeat(21));
    #[rustfmt::skip]
    let cases = [
        ("../..", "..%2F.."), (".", "%2E"), ("..", "%2E%2E"), ("...", "..."),
        ("a\r\nb", "a%0D%0Ab"), ("#[]*?%", "%23%5B%5D%2A%3F%25"),
        ("ünï ✓", "%C3%BCn%C3%AF%20%E2%9C%93"), (&long, &capped),
    ];
    for (value, want) in cases {
        let attrs = attributes(&[("v", value)]);
        let mut f = fields(&attrs);
        f.ordering_key = value;
        let want = format!("{want}/{want}/1234567890");
        let template = "{attributes.v}/{ordering_key}/{message_id}";
        assert_eq!(name(template, &f), want);
    }
}

/// Values (and ids) that would make a name start with `.well-known/acme-challenge/`, which
/// Cloud Storage refuses, have its first `.` written `%2E`; names that merely hold it are kept.
#[test]
fn values_cannot_start_a_name_with_the_acme_challenge_folder() {
    let attrs = attributes(&[("a", ".well-known"), ("b", "acme-challenge"), ("c", "")]);
    let mut f = fields(&attrs);
    #[rustfmt::skip]
    let cases = [
        ("{attributes.a}/{attributes.b}/{message_id}", "%2Ewell-known/acme-challenge/1234567890"),
        ("{attributes.a}/acme-challenge{attributes.c}/{message_id}", "%2Ewell-known/acme-challenge/1234567890"),
        ("{attributes.c}{attributes.a}/acme-challenge/{message_id}", "%2Ewell-known/acme-challenge/1234567890"),
        ("{attributes.a}/{attributes.b}x/{message_id}", ".well-known/acme-challengex/1234567890"),
        ("x/{attributes.a}/{attributes.b}/{message_id}", "x/.well-known/acme-challenge/1234567890"),
    ];
    for (template, want) in cases {
        assert_eq!(name(template, &f), want, "{template}");
    }
    f.message_id = ".well-known";
    assert_eq!(name("{message_id}/acme-challenge/x", &f), "%2Ewell-known/acme-challenge/x");
}

#[test]
fn long_names_are_shortened_keeping_the_whole_id() {
    let attrs = attributes(&[("a", &"v".repeat(2048)), ("b", "short")]);
    let template = "{attributes.a}/".repeat(8) + "{attributes.b}/{message_id}";
    let mut f = fields(&attrs);
    let shortened = name(&template, &f);
    // 1024 - 9 slashes - 128 for the id leave 887 bytes: 8 x 110 + 5 fit.
    let kept = "v".repeat(110) + "/";
    assert_eq!(shortened, kept.repeat(8) + "short/1234567890");
    // No Pub/Sub id is empty or this long; the names stay unique.
    let long_id = "9".repeat(129);
    for (id, hash) in [
        (long_id.as_str(), "6a52146ea09166548278c6e85b6311326c9a5045e87205ec1c10b54f5ba5aee8"),
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ] {
        f.message_id = id;
        assert_eq!(name("{message_id}", &f), format!("sha256={hash}"));
    }
}

#[test]
fn routing_template_end_to_end() {
    let template = "dt={publish_time:%Y-%m-%d}/{attributes.task_type|unrouted}/{hash:2}/\
                    {message_id}.{ext}";
    let template = NameTemplate::parse(template, "in/").expect("valid");
    let routed = attributes(&[("task_type", "data_transformation")]);
    let want = "in/dt=2024-02-29/data_transformation/c7/1234567890.txt";
    assert_eq!(template.render(&fields(&routed)), want);
    let (none, hostile) = (HashMap::new(), attributes(&[("task_type", "../..")]));
    let mut f = fields(&none);
    f.text = false;
    assert_eq!(template.render(&f), "in/dt=2024-02-29/unrouted/c7/1234567890.bin");
    let want = "in/dt=2024-02-29/..%2F../c7/1234567890.txt";
    assert_eq!(template.render(&fields(&hostile)), want);
}

/// What Cloud Storage accepts and recommends.
fn assert_valid(name: &str) {
    assert!((1..=NAME_MAX).contains(&name.len()), "{} bytes: {name:?}", name.len());
    assert!(!name.contains(|c: char| c.is_control() || "#[]*?".contains(c)), "{name:?}");
    assert!(!name.split('/').any(|s| s == "." || s == ".."), "{name:?}");
    assert!(!name.starts_with(".well-known/acme-challenge/"), "{name:?}");
}

/// Valid pieces around a path segment with `{message_id}` and fixed-width tokens.
fn template() -> impl Strategy<Value = String> {
    let fixed_width = prop_oneof![
        Just("{ext}".to_string()),
        Just("{publish_time}".to_string()),
        Just("{message_id}".to_string()),
        (1..=8usize).prop_map(|n| format!("{{hash:{n}}}")),
        "[a-z0-9=._{}-]{0,4}".prop_map(|t| t.replace('{', "{{").replace('}', "}}")),
    ];
    let any_piece = prop_oneof![
        1 => fixed_width.clone(),
        1 => Just("{publish_time:%Y/%m/%d/%H}".to_string()),
        1 => "[a-z0-9=./_-]{0,6}",
        1 => prop_oneof![Just(".well-known/"), Just("acme-challenge/"), Just("/acme-challenge")]
            .prop_map(String::from),
        // Many values, so that some names need shortening.
        2 => Just("{subscription}/{ordering_key}".to_string()),
        2 => "[a-c]".prop_map(|k| format!("{{attributes.{k}}}")),
        2 => "[a-c]".prop_map(|k| format!("{{attributes.{k}|d}}")),
    ];
    let pieces = || prop::collection::vec(any_piece.clone(), 0..8).prop_map(|p| p.concat());
    let id_segment = prop::collection::vec(fixed_width, 0..4);
    let at = any::<prop::sample::Index>();
    (pieces(), id_segment, at, pieces()).prop_map(|(before, mut segment, at, after)| {
        segment.insert(at.index(segment.len() + 1), "{message_id}".to_string());
        let slash = |s: &str| if s.is_empty() { "" } else { "/" };
        [&before, slash(&before), &segment.concat(), slash(&after), &after].concat()
    })
}

fn text() -> impl Strategy<Value = String> {
    let reserved = prop_oneof![Just(".well-known"), Just("acme-challenge")].prop_map(String::from);
    prop_oneof![
        2 => any::<String>(), 1 => "[./]{0,3}", 1 => "[0-9]{1,20}", 3 => ".{30,300}", 1 => reserved
    ]
}

const NANOS: i128 = 1_000_000_000;

fn message() -> impl Strategy<Value = (String, String, String, HashMap<String, String>)> {
    let key = prop_oneof![3 => "[a-c]", 1 => any::<String>()];
    let attributes = prop::collection::hash_map(key, text(), 0..8);
    (text(), text(), text(), attributes)
}

proptest! {
    #[test]
    fn the_publish_time_stamp_is_what_its_format_description_renders(
        nanos in proptest::option::of(-377_705_116_800 * NANOS..253_402_300_800 * NANOS),
    ) {
        let time = nanos.map(|n| OffsetDateTime::from_unix_timestamp_nanos(n).expect("in range"));
        let format = time::macros::format_description!(
            "[year][month][day]_[hour][minute][second]_[subsecond digits:6]"
        );
        let expected = time.map_or("00000000_000000_000000".into(), |t| t.format(format).unwrap());
        let mut stamp = String::new();
        push_stamp(&mut stamp, time);
        prop_assert_eq!(stamp, expected);
    }

    #[test]
    fn names_are_valid_deterministic_and_unique_per_id(
        (template, prefix) in (template(), "[a-z/]{0,8}"),
        ((id, ordering_key, subscription_id, attributes), other) in (message(), message()),
        // From year 0: nothing was published before, and `{publish_time}` is wider there.
        nanos in proptest::option::of(-62_167_219_200 * NANOS..253_402_300_800 * NANOS),
        text in any::<bool>(),
        gzip in any::<bool>(),
    ) {
        let template = NameTemplate::parse(&template, &prefix);
        let template = if gzip { template.and_then(NameTemplate::gzipped) } else { template };
        prop_assume!(template.is_ok(), "refused: {:?}", template);
        let template = template.expect("checked");
        let publish_time = nanos.and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok());
        let mut f = NameFields {
            message_id: &id, publish_time, attributes: &attributes,
            ordering_key: &ordering_key, subscription_id: &subscription_id, text,
        };
        let name = template.render(&f);
        assert_valid(&name);
        prop_assert_eq!(&name, &template.render(&f));
        let mut encoded_id = String::new();
        push_id(&mut encoded_id, &id);
        prop_assert!(name.contains(&encoded_id), "{} lacks {}", name, encoded_id);
        // Another id, alone or with everything else different too.
        let (other_id, other_key, other_subscription, other_attributes) = &other;
        prop_assume!(id != *other_id);
        f.message_id = other_id;
        prop_assert_ne!(&name, &template.render(&f));
        (f.ordering_key, f.subscription_id) = (other_key, other_subscription);
        (f.attributes, f.text, f.publish_time) = (other_attributes, !text, None);
        prop_assert_ne!(&name, &template.render(&f));
    }

    /// Templates and values made of the pieces of `.well-known/acme-challenge/`, so that many
    /// would start a name with it.
    #[test]
    fn values_never_start_a_name_with_the_acme_challenge_folder(
        pieces in prop::collection::vec(prop::sample::select(vec![
            "{attributes.a}", "{attributes.b}", "{ordering_key}", "{message_id}", "/",
            ".well-known", "acme-challenge", "-",
        ]), 1..6),
        [a, b, key, id] in [(); 4].map(|()| prop::sample::select(vec![
            ".well-known", "acme-challenge", "", "-", "1",
        ])),
    ) {
        let template = NameTemplate::parse(&(pieces.concat() + "/{message_id}"), "");
        prop_assume!(template.is_ok(), "refused: {:?}", template);
        let attributes = attributes(&[("a", a), ("b", b)]);
        let mut f = fields(&attributes);
        (f.ordering_key, f.message_id) = (key, id);
        assert_valid(&template.expect("checked").render(&f));
    }

    #[test]
    fn parse_never_panics(template in any::<String>(), prefix in any::<String>()) {
        let _ = NameTemplate::parse(&template, &prefix);
    }
}
