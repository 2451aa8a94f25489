//! Sixteen 25 MiB documents uploaded at once: document-review holds at most
//! `[documents] max_concurrent_downloads` (2) of them in memory, whatever the consumer's
//! concurrency (16). Prints the peak RSS it adds; nothing here asserts a duration.

use futures::TryStreamExt as _;
use tgb_sandbox::tg::model::UploadDocument;
use tgb_testkit::eventually;

use crate::support::{Env, POLICY, partner, uploaded};

const MIB: usize = 1 << 20;

/// Peak resident set size of this process, KiB (Linux; 0 elsewhere).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// About two minutes in a debug build (400 MiB generated, hashed and stored): run it with
// `cargo nextest run -p document-review --run-ignored only sixteen`.
#[ignore = "a measurement: about two minutes and 1 GiB in a debug build"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_large_documents_at_once_are_stored_two_at_a_time() {
    let policy = POLICY.replace("max_size_bytes = 4096", "max_size_bytes = 26214400");
    let env = Env::start_with(&policy, false).await;
    let events: Vec<_> = (0..16)
        .map(|i| {
            let up = env
                .sandbox
                .tg()
                .upload_document(UploadDocument {
                    partner: Some(partner(&format!("BULK{i:02}"))),
                    doc_type: Some("other".into()),
                    file_name: Some(format!("scan-{i}.pdf")),
                    generate_size: Some(25 * MIB),
                    ..Default::default()
                })
                .unwrap();
            uploaded(&up)
        })
        .collect();
    // The sandbox now holds the 400 MiB; what follows is the bridge's share.
    let before = peak_rss_kib();
    for event in events {
        env.publish(event).await;
    }
    let store = env
        .bus
        .jetstream()
        .get_object_store(tgb_bus::names::OBJECT_DOCUMENTS)
        .await
        .unwrap();
    eventually("sixteen documents stored", tgb_testkit::HANG_GUARD, || {
        let store = store.clone();
        async move {
            let stored: Vec<_> = store.list().await.ok()?.try_collect().await.ok()?;
            (stored.len() == 16).then_some(())
        }
    })
    .await
    .unwrap();
    let after = peak_rss_kib();
    println!(
        "sixteen 25 MiB documents at once: peak RSS {before} KiB with the sandbox holding them, \
         {after} KiB once all are stored: +{} MiB for the downloads",
        after.saturating_sub(before) / 1024
    );
    env.stop().await;
}
