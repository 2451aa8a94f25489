//! Coalescing of writes by group commit: a change set submitted while the lane is idle (no
//! `$batch` in flight, nothing queued) is sent at once; change sets submitted while a batch is
//! in flight queue behind it and leave together, up to `max_requests` requests, as one
//! `$batch` with `Prefer: odata.continue-on-error`, each as its own atomic change set, when
//! that batch answers (or at once when they fill a batch). A lone single-request change set is
//! sent as a plain request. Nothing waits on a timer: under light load a write costs one round
//! trip; under load, requests gather while the previous batch travels, so a burst of TG events
//! about one case or one account (comment + partner message, case + dispute columns, the cases
//! of one partner) still costs one request instead of several.
//!
//! Order: change sets leave in the order submitted. A caller that must order two writes (one
//! entity's, under its lock) awaits the first answer before it submits the second.

use std::collections::VecDeque;

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
    /// Starts the collector (it ends when every `Batcher` clone is dropped and the last batch
    /// has answered).
    pub fn start(client: DataverseClient, max_requests: usize) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(collect(client, rx, max_requests.max(1)));
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

/// The change sets waiting to leave, oldest first, and their requests counted.
#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    requests: usize,
}

impl Queue {
    fn push(&mut self, job: Job) {
        self.requests += job.set.len();
        self.jobs.push_back(job);
    }

    /// Whether a batch leaves now: at once when none is in flight, else only a full one.
    fn ready(&self, in_flight: usize, max: usize) -> bool {
        !self.jobs.is_empty() && (in_flight == 0 || self.requests >= max)
    }

    /// The oldest change sets holding at most `max` requests together (at least one, however
    /// large).
    fn take(&mut self, max: usize) -> Vec<Job> {
        let mut out = Vec::new();
        let mut size = 0;
        while let Some(next) = self.jobs.front() {
            if !out.is_empty() && size + next.set.len() > max {
                break;
            }
            size += next.set.len();
            out.extend(self.jobs.pop_front());
        }
        self.requests -= size;
        out
    }
}

/// Tells the collector a batch has answered, even when its task panicked.
struct Done(mpsc::UnboundedSender<()>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

async fn collect(client: DataverseClient, mut rx: mpsc::UnboundedReceiver<Job>, max: usize) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut queue = Queue::default();
    let mut in_flight = 0usize;
    let mut open = true;
    loop {
        while queue.ready(in_flight, max) {
            let jobs = queue.take(max);
            in_flight += 1;
            let done = Done(done_tx.clone());
            let client = client.clone();
            tokio::spawn(async move {
                let _done = done;
                send(client, jobs).await;
            });
        }
        if !open && in_flight == 0 {
            break;
        }
        tokio::select! {
            job = rx.recv(), if open => match job {
                Some(job) => {
                    queue.push(job);
                    // Change sets submitted together leave together.
                    while queue.requests < max {
                        match rx.try_recv() {
                            Ok(job) => queue.push(job),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some(()) = done_rx.recv() => in_flight -= 1,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(requests: usize) -> Job {
        let set = (0..requests)
            .map(|i| BatchRequest::new(reqwest::Method::PATCH, format!("incidents({i})"), None))
            .collect();
        Job {
            set,
            reply: oneshot::channel().0,
        }
    }

    fn sizes(jobs: &[Job]) -> Vec<usize> {
        jobs.iter().map(|j| j.set.len()).collect()
    }

    #[test]
    fn an_idle_lane_sends_at_once_and_a_busy_one_waits_for_a_full_batch() {
        let mut q = Queue::default();
        assert!(!q.ready(0, 10), "nothing queued, nothing to send");
        q.push(job(1));
        assert!(q.ready(0, 10), "idle lane: no waiting for company");
        assert!(!q.ready(1, 10), "a batch in flight: queue behind it");
        for _ in 0..4 {
            q.push(job(2));
        }
        assert_eq!(q.requests, 9);
        assert!(!q.ready(1, 10));
        q.push(job(1));
        assert!(q.ready(1, 10), "a full batch leaves without waiting");
    }

    #[test]
    fn a_batch_takes_the_oldest_change_sets_up_to_the_cap() {
        let mut q = Queue::default();
        for n in [3, 4, 2, 5, 1] {
            q.push(job(n));
        }
        assert_eq!(sizes(&q.take(10)), vec![3, 4, 2]);
        assert_eq!(q.requests, 6);
        assert_eq!(sizes(&q.take(10)), vec![5, 1]);
        assert_eq!((q.requests, q.jobs.len()), (0, 0));
        q.push(job(12));
        q.push(job(1));
        assert_eq!(
            sizes(&q.take(10)),
            vec![12],
            "an oversized change set goes alone"
        );
        assert_eq!(sizes(&q.take(10)), vec![1]);
    }
}
