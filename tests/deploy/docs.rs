//! Every relative link in the README, ARCHITECTURE.md and `docs/` leads somewhere: the file
//! exists, and a `#fragment` names a heading of the Markdown file by GitHub's anchor rule. Links
//! to the web are not followed. A small scan, not a Markdown parser: inline links and images
//! outside code blocks and code spans, and ATX headings, which is all these pages use.

use crate::harness::repo_root;
use std::collections::HashMap;
use std::fs;
use std::path::Path;

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = repo_root();
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let docs = fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path());
    pages.extend(docs.filter(|p| p.extension().is_some_and(|ext| ext == "md")));
    assert!(pages.len() > 2, "no pages in docs/");
    let dangling: Vec<String> = pages.iter().flat_map(|page| dangling_links(page)).collect();
    assert!(dangling.is_empty(), "dangling links:\n{}", dangling.join("\n"));
}

#[test]
fn a_missing_file_or_heading_is_reported_and_the_rest_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let other = "# Other page\n\n## Scaling: by hand, or on `the backlog`\n";
    fs::write(dir.path().join("other.md"), other).unwrap();
    let page = dir.path().join("page.md");
    let text = "# Page\n\n## Same\n\n## Same\n\n\
        [fine](other.md#scaling-by-hand-or-on-the-backlog), [also](#same-1) and [here](#page),\n\
        [gone](other.md#operations), [nowhere](missing.md), [self](#same-2).\n\
        `[in code](missing.md)`, [web](https://example.com/#x), ![image](other.md)\n\
        ```\n[in a block](missing.md)\n```\n";
    fs::write(&page, text).unwrap();
    let problems = dangling_links(&page);
    let expected = ["other.md#operations: no such heading", "missing.md: no such file", "#same-2"];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, expected) in problems.iter().zip(expected) {
        assert!(problem.contains(expected), "{problem} should say {expected}");
    }
}

#[test]
fn anchors_follow_githubs_rule() {
    let headings = "# Scaling: by hand or on the backlog\n\
        ### What a naming template costs: `cargo bench --bench name_render`\n\
        ## Pub/Sub's cap per stream\n## Dashboard\n## Dashboard\n```\n# not a heading\n```\n";
    assert_eq!(
        anchors(headings),
        [
            "scaling-by-hand-or-on-the-backlog",
            "what-a-naming-template-costs-cargo-bench---bench-name_render",
            "pubsubs-cap-per-stream",
            "dashboard",
            "dashboard-1",
        ]
    );
}

/// One line for each relative link of `page` that leads nowhere.
fn dangling_links(page: &Path) -> Vec<String> {
    let text = fs::read_to_string(page).unwrap();
    let dir = page.parent().unwrap();
    let name = page.strip_prefix(repo_root()).unwrap_or(page).display().to_string();
    let mut problems = Vec::new();
    for target in links(&text) {
        if ["http:", "https:", "mailto:"].iter().any(|scheme| target.starts_with(scheme)) {
            continue;
        }
        let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
        let file = match path {
            "" => page.to_path_buf(),
            _ if path.starts_with('/') => repo_root().join(path.trim_start_matches('/')),
            _ => dir.join(path),
        };
        if !file.exists() {
            problems.push(format!("{name}: {target}: no such file"));
        } else if !fragment.is_empty() && file.extension().is_some_and(|ext| ext == "md") {
            let headings = fs::read_to_string(&file).unwrap();
            if !anchors(&headings).iter().any(|anchor| anchor == fragment) {
                problems.push(format!("{name}: {target}: no such heading"));
            }
        }
    }
    problems
}

/// The targets of the inline links and images of `markdown`, outside code.
fn links(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    // Backticks seen so far in the paragraph: odd while inside a code span (which may wrap).
    let mut ticks = 0;
    for line in prose(markdown) {
        if line.trim().is_empty() {
            ticks = 0;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            ticks += rest[..at].matches('`').count();
            let after = &rest[at + 2..];
            let end = after.find([')', ' ']).unwrap_or(after.len());
            if ticks % 2 == 0 {
                targets.push(after[..end].trim_matches(['<', '>']).to_string());
            }
            rest = &after[end..];
        }
        ticks += rest.matches('`').count();
    }
    targets
}

/// The anchors GitHub gives the headings of `markdown`: lowercase, spaces as `-`, punctuation
/// other than `-` and `_` dropped (backticks too), and `-1`, `-2` ... after repeated headings.
fn anchors(markdown: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for line in prose(markdown) {
        let level = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
            continue;
        }
        let title = line[level..].trim().trim_end_matches('#').trim_end();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                _ if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.push(if *count == 0 { slug } else { format!("{slug}-{count}") });
        *count += 1;
    }
    anchors
}

/// The lines of `markdown` outside fenced code blocks.
fn prose(markdown: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    markdown.lines().filter(move |line| {
        let fence = ["```", "~~~"].iter().any(|f| line.trim_start().starts_with(f));
        fenced ^= fence;
        !fence && !fenced
    })
}
