//! The soak's account: every published message stored (exactly one object, byte-exact) or
//! dead-lettered (with the workers' records of why); anything else is a failure, described by
//! what the workers' logs and the soak's ledger say of it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::chaos::Ledger;
use super::{MAX_DELIVERY_ATTEMPTS, Published, SEQ, Soak, SoakReport, body};
use crate::{Gcs, ObjectInfo, Received};

pub struct Input {
    pub published: Vec<Published>,
    pub objects: Vec<ObjectInfo>,
    pub dead: Vec<Received>,
    pub ledger: Ledger,
    pub elapsed: Duration,
}

/// The message ids the objects carry in their metadata.
pub fn stored_ids(objects: &[ObjectInfo]) -> BTreeSet<String> {
    objects.iter().filter_map(|o| o.metadata.get("message_id").cloned()).collect()
}

/// What the workers' logs say about one message: which processes (index into the ledger's
/// lives) received it, acked it, and why they nacked it.
#[derive(Debug, Default)]
struct Records {
    received: Vec<usize>,
    acked: usize,
    nacks: BTreeMap<String, u64>,
}

/// Reads every worker log by its stable fields, never its wording: `outcome` is `received` once
/// per delivery, then `acked` or `nacked` (with the `reason`) once per settled delivery.
fn read_records(ledger: &Ledger) -> (BTreeMap<String, Records>, u64) {
    let (mut records, mut panics) = (BTreeMap::<String, Records>::new(), 0);
    for (life, l) in ledger.lives.iter().enumerate() {
        let text = std::fs::read_to_string(&l.log).unwrap_or_default();
        panics += text.matches("panicked").count() as u64;
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
            let (Some(id), Some(outcome)) =
                (event["message_id"].as_str(), event["outcome"].as_str())
            else {
                continue;
            };
            let r = records.entry(id.to_string()).or_default();
            match outcome {
                "received" => r.received.push(life),
                "acked" => r.acked += 1,
                "nacked" => {
                    let reason = event["reason"].as_str().unwrap_or("unknown");
                    *r.nacks.entry(reason.to_string()).or_default() += 1;
                }
                _ => {}
            }
        }
    }
    (records, panics)
}

pub async fn account(soak: &Soak, input: Input, gcs: &Gcs, bucket: &str) -> Result<SoakReport> {
    let Input { published, objects, dead, ledger, elapsed } = input;
    let (records, panics) = read_records(&ledger);
    let mut failures = Vec::new();
    let by_seq: BTreeMap<String, &Published> =
        published.iter().map(|p| (p.seq.to_string(), p)).collect();
    let mut dead_ids = BTreeSet::new();
    for m in &dead {
        match m.attributes.get(SEQ).and_then(|s| by_seq.get(s)) {
            Some(p) => drop(dead_ids.insert(p.id.clone())),
            None => failures.push(format!("a dead letter that was never published: {m:?}")),
        }
    }

    // Objects by the message id in their metadata; each compared with the body it must hold.
    // A publish retried after a failed attempt may have left a second copy under an id the
    // publisher never learnt: its object is known by the sequence number in its metadata.
    let mut seq_of: BTreeMap<&str, u64> =
        published.iter().map(|p| (p.id.as_str(), p.seq)).collect();
    let mut per_id: BTreeMap<&str, Vec<&ObjectInfo>> = BTreeMap::new();
    let mut extra_copies: BTreeMap<&str, Vec<&ObjectInfo>> = BTreeMap::new();
    for o in &objects {
        let Some(id) = o.metadata.get("message_id") else {
            failures.push(format!("object {} has no message id", o.name));
            continue;
        };
        if seq_of.contains_key(id.as_str()) {
            per_id.entry(id).or_default().push(o);
            continue;
        }
        match o.metadata.get(SEQ).and_then(|s| by_seq.get(s)).filter(|p| p.retried) {
            Some(p) => {
                seq_of.insert(id, p.seq);
                extra_copies.entry(id).or_default().push(o);
            }
            None => failures.push(format!("object {} is no published message's", o.name)),
        }
    }
    let to_compare: Vec<(&str, u64)> = objects
        .iter()
        .filter_map(|o| {
            Some((o.name.as_str(), *seq_of.get(o.metadata.get("message_id")?.as_str())?))
        })
        .collect();
    let compared: Vec<(String, usize, bool)> = futures::stream::iter(to_compare)
        .map(|(name, seq)| async move {
            let bytes = gcs.download(bucket, name).await?;
            anyhow::Ok((name.to_string(), bytes.len(), bytes == body(seq)))
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let bytes_compared: u64 = compared.iter().map(|(_, len, _)| *len as u64).sum();
    let corrupted: Vec<String> = (compared.into_iter()).filter(|c| !c.2).map(|c| c.0).collect();

    // Every published message, classified.
    let lives = &ledger.lives;
    let killed = |life: usize| {
        let l = &lives[life];
        let end = match (l.ended, l.final_stop) {
            (Some(at), false) => format!("killed or exited at {at:?}"),
            (Some(_), true) => "stopped at the end".to_string(),
            (None, _) => "still running".to_string(),
        };
        format!("process {life} (instance {}, started at {:?}, {end})", l.slot, l.started)
    };
    let (mut stored, mut doubled, mut acked_without_object) = (0u64, Vec::new(), Vec::new());
    let (mut missing, mut dead_lettered) = (Vec::new(), Vec::new());
    let nothing = Records::default();
    for p in &published {
        let r = records.get(&p.id).unwrap_or(&nothing);
        let nacks: Vec<String> = r.nacks.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        let (nacks, recorded) = (nacks.join(", "), r.received.len());
        match per_id.get(p.id.as_str()).map_or(0, Vec::len) {
            0 if r.acked > 0 => acked_without_object.push(p.id.clone()),
            0 if dead_ids.contains(&p.id) => dead_lettered.push(format!(
                "{} (seq {}): {recorded} deliveries recorded, nacked for [{nacks}]; {} of \
                 {MAX_DELIVERY_ATTEMPTS} attempts not recorded (spent on streams that ended)",
                p.id,
                p.seq,
                (MAX_DELIVERY_ATTEMPTS as usize).saturating_sub(recorded)
            )),
            0 => {
                let last = r.received.last().map_or("never received".to_string(), |&l| killed(l));
                missing.push(format!(
                    "message {} (seq {}, published at {:?}) neither stored nor dead-lettered: \
                     {recorded} deliveries recorded, the last by {last}; nacked for [{nacks}]",
                    p.id, p.seq, p.at
                ));
            }
            1 => stored += 1,
            _ => doubled.push(p.id.clone()),
        }
    }
    // An extra copy is a message of its own to Pub/Sub: it too must have exactly one object.
    doubled.extend(extra_copies.iter().filter(|(_, l)| l.len() > 1).map(|(id, _)| id.to_string()));
    failures.extend(missing.iter().cloned());
    let lists = [("doubled", &doubled), ("corrupted", &corrupted)];
    for (what, list) in lists.into_iter().chain([("acked without object", &acked_without_object)]) {
        if let Some(first) = list.first() {
            failures.push(format!("{} {what}, e.g. {first}", list.len()));
        }
    }
    if panics > 0 {
        failures.push(format!("{panics} panics in the worker logs"));
    }
    // The soak's bucket holds only its workers' objects: a name collision there means a
    // redelivery failed to recognise its own object, which would dead-letter stored messages.
    let collisions: Vec<&String> = (records.iter())
        .filter(|(_, r)| r.nacks.contains_key("name_collision"))
        .map(|(id, _)| id)
        .collect();
    if let Some(id) = collisions.first() {
        let n = collisions.len();
        failures.push(format!("{n} name collisions in the soak's own bucket, e.g. message {id}"));
    }
    failures.extend(ledger.surprises.iter().cloned());

    let per_message: Vec<usize> =
        per_id.values().chain(extra_copies.values()).map(Vec::len).collect();
    let (least, most) = (per_message.iter().min(), per_message.iter().max());
    let peak_rss_mib: Vec<f64> =
        ledger.peak_rss_kib.iter().map(|&k| (k as f64 / 102.4).round() / 10.0).collect();
    let retried = published.iter().filter(|p| p.retried).count();
    let faults: BTreeMap<&str, Value> = (ledger.faults.iter())
        .map(|(k, (n, t))| (*k, json!({ "count": n, "seconds": t.as_secs() })))
        .collect();
    let json = json!({
        "duration_s": elapsed.as_secs(),
        "soak_s": soak.duration.as_secs(),
        "instances": soak.instances,
        "seed": soak.seed,
        "faults": faults,
        "restarts": ledger.restarts,
        "worker_processes": ledger.lives.len(),
        "published": published.len(),
        "objects": objects.len(),
        "objects_per_message": { "min": least, "max": most },
        "stored": stored,
        "retried_publishes": retried,
        "extra_copies_stored": extra_copies.len(),
        "bytes_compared": bytes_compared,
        "acked_without_object": acked_without_object.len(),
        "doubled": doubled.len(),
        "corrupted": corrupted.len(),
        "dead_lettered": dead_lettered.len(),
        "neither_stored_nor_dead_lettered": missing.len(),
        "peak_rss_mib": peak_rss_mib,
        "failures": failures.len(),
    });
    let faults: Vec<String> =
        ledger.faults.iter().map(|(k, (n, t))| format!("{k} {n}x/{}s", t.as_secs())).collect();
    let mut text = format!(
        "chaos soak: {} ({} min of chaos, {} instances, seed {})\n  \
         faults:    {}\n  \
         restarts:  {:?} ({} worker processes)\n  \
         published: {}; objects {}; objects per message {least:?}..{most:?}\n  \
         stored byte-exact: {} ({bytes_compared} bytes compared); corrupted {}; doubled {}; \
         acked without object {}\n",
        if failures.is_empty() { "PASSED" } else { "FAILED" },
        soak.duration.as_secs() / 60,
        soak.instances,
        soak.seed,
        faults.join(", "),
        ledger.restarts,
        ledger.lives.len(),
        published.len(),
        objects.len(),
        stored - corrupted.len() as u64,
        corrupted.len(),
        doubled.len(),
        acked_without_object.len()
    );
    if retried > 0 {
        text += &format!(
            "  publishes retried after a failed attempt: {retried} messages; second copies \
             stored (each once, byte-exact): {}\n",
            extra_copies.len()
        );
    }
    text += &format!("  dead-lettered: {}\n", dead_lettered.len());
    dead_lettered.iter().for_each(|d| text += &format!("    {d}\n"));
    text += &format!(
        "  neither stored nor dead-lettered after a drain of {:?} without progress: {}\n  \
         peak RSS per instance (MiB): {peak_rss_mib:?}\n",
        soak.quiet(),
        missing.len()
    );
    failures.iter().take(20).for_each(|f| text += &format!("  FAILURE: {f}\n"));
    if failures.len() > 20 {
        text += &format!("  ... {} failures in all\n", failures.len());
    }
    text += &format!("  worker logs: {}", soak.log_dir.display());
    Ok(SoakReport { json, text, failures })
}
