//! Coalescing of writes: change sets submitted within `linger` of each other (up to
//! `max_requests` requests) travel as one `$batch` with `Prefer: odata.continue-on-error`, each
//! as its own atomic change set. A lone single-request change set is sent as a plain request.
//! A burst of TG events about one case or one account (comment + partner message, case +
//! dispute columns, the cases of one partner) thus costs one request instead of several.

use std::time::Duration;

use tgb_clients::dataverse::{BatchAnswer, BatchRequest, DataverseClient, DataverseError};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Vec<BatchAnswer>, DataverseError>>;

struct Job {
    set: Vec<BatchRequest>,
    reply: Reply,
}

/// Submits change sets; cheap to clone.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("requests", &self.set.len())
            .finish()
    }
}

impl Batcher {
    /// Starts the collector (it ends when every `Batcher` clone is dropped).
    pub fn start(client: DataverseClient, max_requests: usize, linger: Duration) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(collect(client, rx, max_requests.max(1), linger));
        Batcher { tx }
    }

    /// Runs `set` atomically; answers its responses in order.
    pub async fn submit(&self, set: Vec<BatchRequest>) -> Result<Vec<BatchAnswer>, DataverseError> {
        let (reply, answer) = oneshot::channel();
        let gone = || DataverseError::Unavailable {
            route: "POST $batch".into(),
            status: None,
            retry_after: None,
            message: "the batcher stopped".into(),
        };
        self.tx.send(Job { set, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn collect(
    client: DataverseClient,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max: usize,
    linger: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut size = jobs[0].set.len();
        let deadline = tokio::time::Instant::now() + linger;
        while size < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => {
                    size += job.set.len();
                    jobs.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let client = client.clone();
        tokio::spawn(send(client, jobs));
    }
}

async fn send(client: DataverseClient, jobs: Vec<Job>) {
    if jobs.len() == 1 && jobs[0].set.len() == 1 {
        let job = jobs.into_iter().next().expect("one job");
        let req = &job.set[0];
        let headers: Vec<(&str, String)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let result = client
            .send(req.method.clone(), &req.path, &headers, req.body.as_ref())
            .await
            .map(|a| {
                let mut headers = Vec::new();
                if let Some(e) = a.etag {
                    headers.push(("etag".to_owned(), e));
                }
                if let Some(e) = a.entity_id {
                    headers.push(("odata-entityid".to_owned(), e));
                }
                vec![BatchAnswer {
                    status: a.status,
                    headers,
                    body: a.body,
                }]
            });
        let _ = job.reply.send(result);
        return;
    }
    metrics::counter!("tgb_dynamics_batches_total").increment(1);
    metrics::counter!("tgb_dynamics_batched_requests_total")
        .increment(jobs.iter().map(|j| j.set.len() as u64).sum());
    let sets: Vec<Vec<BatchRequest>> = jobs.iter().map(|j| j.set.clone()).collect();
    match client.batch(&sets).await {
        Ok(results) => {
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            let message = e.to_string();
            let retry_after = e.retry_after();
            let transient = e.is_transient();
            for job in jobs {
                let err = if transient {
                    DataverseError::Unavailable {
                        route: "POST $batch".into(),
                        status: None,
                        retry_after,
                        message: message.clone(),
                    }
                } else {
                    DataverseError::Rejected {
                        route: "POST $batch".into(),
                        status: 400,
                        code: String::new(),
                        message: message.clone(),
                    }
                };
                let _ = job.reply.send(Err(err));
            }
        }
    }
}
