//! Reading what a stream holds on a subject, once, without leaving state behind.

use async_nats::jetstream;
use futures::StreamExt;

/// Every message `stream` holds on `filter_subject`, oldest first, read with an ordered
/// consumer (nothing acknowledged, no durable left behind): a thread's ledger entries, the
/// events of one subject a test or a check counts.
pub async fn messages_on(
    js: &jetstream::Context,
    stream: &str,
    filter_subject: &str,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter_subject.to_owned(),
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    let mut pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    while pending > 0 {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message?;
        pending = message.info().map(|i| i.pending).unwrap_or(0);
        out.push(message);
    }
    Ok(out)
}
