//! Run locks on S3: `PREFIX/.kirt/locks/NAME.json`, created by a conditional PUT
//! (`If-None-Match: *`: exactly one of two racing runs gets it), renewed by its holder with
//! `If-Match` on the ETag it last wrote (a holder that was taken over notices), and taken over
//! — again with `If-Match`, so two runs never both take it — once S3's Last-Modified says it was
//! not renewed for its lease. With write-only credentials the lock is taken and renewed (PUTs)
//! but may neither be read nor removed: `actions::backup::lock` then goes on without it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use tokio_util::sync::CancellationToken;

use super::{jiff_time, s3_err, S3Store};
use crate::error::{Error, Result};
use crate::runlock::{lost, Attempt, Busy, Held, Holder, MAX_RECORD};

/// Where locks live, below the store's prefix (never listed).
const DIR: &str = ".kirt/locks/";

pub(super) async fn acquire(
    store: &S3Store,
    name: &str,
    holder: &Holder,
    lease: Duration,
) -> Result<Attempt> {
    let lock = Lock {
        client: store.client.clone(),
        bucket: store.bucket.clone(),
        key: store.key(&format!("{DIR}{name}.json")),
        endpoint: store.endpoint.clone(),
    };
    // a few rounds: between reading a stale lock and taking it, another run may have moved
    for _ in 0..3 {
        match lock.put(holder, None).await? {
            Put::Written(etag) => return Ok(Attempt::Acquired(lock.hold(holder, lease, etag))),
            Put::Changed => {}
        }
        let Some(found) = lock.read().await? else {
            continue; // released meanwhile: try again
        };
        let busy = Busy {
            lock: lock.loc(),
            lease: found.holder.as_ref().map(Holder::lease).unwrap_or(lease),
            holder: found.holder,
            renewed_ago: found.age,
        };
        if !busy.stale() {
            return Ok(Attempt::Busy(busy));
        }
        match lock.put(holder, Some(&found.etag)).await? {
            Put::Written(etag) => {
                tracing::warn!(
                    "took over the stale lock {} of {}: not renewed for {}s, longer than its lease of {}s",
                    lock.loc(),
                    busy.holder
                        .as_ref()
                        .map(Holder::to_string)
                        .unwrap_or_else(|| "a run whose record cannot be read".into()),
                    busy.renewed_ago.unwrap_or_default().as_secs(),
                    busy.lease.as_secs()
                );
                return Ok(Attempt::Acquired(lock.hold(holder, lease, etag)));
            }
            Put::Changed => {}
        }
    }
    Err(Error::failed(format!(
        "the lock {} kept changing while kirt tried to take it; try again",
        lock.loc()
    )))
}

#[derive(Clone)]
struct Lock {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    endpoint: String,
}

enum Put {
    Written(String),
    /// The precondition failed: the lock exists (or changed since it was read).
    Changed,
}

/// A lock record as read back.
struct Found {
    holder: Option<Holder>,
    etag: String,
    /// Since S3 last wrote it (S3's Last-Modified against this machine's clock).
    age: Option<Duration>,
}

/// 412 (the condition did not hold) or 409 (a conditional write raced another).
fn changed<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    matches!(e, SdkError::ServiceError(s) if matches!(s.raw().status().as_u16(), 409 | 412))
}

impl Lock {
    fn loc(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Writes `holder` if the lock does not exist (`etag` None) or is still at `etag`.
    async fn put(&self, holder: &Holder, etag: Option<&str>) -> Result<Put> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_type("application/json")
            .body(ByteStream::from(holder.to_json()));
        req = match etag {
            None => req.if_none_match("*"),
            Some(t) => req.if_match(t),
        };
        match req.send().await {
            Ok(out) => Ok(Put::Written(out.e_tag().unwrap_or_default().to_string())),
            Err(e) if changed(&e) => Ok(Put::Changed),
            Err(e) => Err(s3_err(&self.loc(), &self.endpoint, "PutObject", e)),
        }
    }

    /// The current record, `None` when there is none; bounded (it may have been planted).
    async fn read(&self) -> Result<Option<Found>> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return match s3_err(&self.loc(), &self.endpoint, "GetObject", e) {
                    Error::NotFound { .. } => Ok(None),
                    e => Err(e),
                }
            }
        };
        let etag = out.e_tag().unwrap_or_default().to_string();
        let age = out
            .last_modified()
            .and_then(jiff_time)
            .map(|t| jiff::Timestamp::now().duration_since(t))
            .and_then(|d| Duration::try_from(d).ok());
        let holder = if out.content_length().unwrap_or(0) as u64 > MAX_RECORD {
            None
        } else {
            out.body
                .collect()
                .await
                .ok()
                .and_then(|b| Holder::parse(&b.into_bytes()))
        };
        Ok(Some(Found { holder, etag, age }))
    }

    /// Starts renewing the lock (every quarter of the lease) and hands out the holder's handle.
    fn hold(self, holder: &Holder, lease: Duration, etag: String) -> Box<dyn Held> {
        let state = Arc::new(Mutex::new(State { etag, lost: None }));
        let stop = CancellationToken::new();
        let every = (lease / 4).max(Duration::from_millis(500));
        let renewer = {
            let (lock, state, stop, mut holder) =
                (self.clone(), state.clone(), stop.clone(), holder.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    // (never interrupted mid-request: the ETag written is always recorded)
                    holder.renewed = Some(jiff::Timestamp::now());
                    let etag = lock_state(&state).etag.clone();
                    match lock.put(&holder, Some(&etag)).await {
                        Ok(Put::Written(t)) => lock_state(&state).etag = t,
                        Ok(Put::Changed) => {
                            let taker = lock.read().await.ok().flatten().and_then(|f| f.holder);
                            tracing::error!("{}", lost(&lock.loc(), taker.as_ref()));
                            lock_state(&state).lost = Some(taker);
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot renew the run lock; trying again")
                        }
                    }
                }
            })
        };
        Box::new(S3Lock {
            lock: self,
            state,
            stop,
            renewer: Mutex::new(Some(renewer)),
        })
    }
}

struct State {
    /// The ETag of the record this run last wrote.
    etag: String,
    /// Set once another run took the lock over (and who, if it could be read).
    lost: Option<Option<Holder>>,
}

fn lock_state(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct S3Lock {
    lock: Lock,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait]
impl Held for S3Lock {
    fn describe(&self) -> String {
        self.lock.loc()
    }

    fn check(&self) -> Result<()> {
        match &lock_state(&self.state).lost {
            Some(taker) => Err(lost(&self.lock.loc(), taker.as_ref())),
            None => Ok(()),
        }
    }

    async fn release(self: Box<Self>) {
        self.stop.cancel();
        let renewer = self
            .renewer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(r) = renewer {
            let _ = r.await;
        }
        let (etag, lost) = {
            let s = lock_state(&self.state);
            (s.etag.clone(), s.lost.is_some())
        };
        if lost {
            return; // another run's lock now
        }
        let l = &self.lock;
        let delete = |etag: Option<String>| {
            l.client
                .delete_object()
                .bucket(&l.bucket)
                .key(&l.key)
                .set_if_match(etag)
                .send()
        };
        // Only the record this run wrote; a server without conditional deletes gets a plain one.
        let res = match delete(Some(etag)).await {
            Err(e) if !changed(&e) && !super::denied(&e) && !super::pending::gone(&e) => {
                tracing::debug!(error = %DisplayErrorContext(&e), "conditional delete of the run lock failed; deleting it plainly");
                delete(None).await
            }
            other => other,
        };
        match res {
            Ok(_) => {}
            Err(e) if super::denied(&e) => tracing::warn!(
                "cannot remove the run lock {} (no s3:DeleteObject on …/.kirt/*: write-only credentials); the next run takes it over once its lease has passed, if it may read it (docs/deploy.md)",
                l.loc()
            ),
            Err(e) => tracing::warn!(
                "cannot remove the run lock {}: {}; the next run takes it over once its lease has passed",
                l.loc(),
                DisplayErrorContext(&e)
            ),
        }
    }
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        // not released (a panic, an early return): stop renewing; the lease lets it expire
        self.stop.cancel();
    }
}
