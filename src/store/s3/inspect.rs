//! `kirt doctor --store` on S3: the bucket's versioning and Object Lock configuration, and which
//! of the permissions kirt's roles need this identity has — each tried with a request that
//! changes nothing: a listing of one key, a read and a versioned delete of a key that does not
//! exist, a multipart upload started and aborted at once.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::{denied, S3Store};
use crate::store::Finding;

pub(super) async fn run(s: &S3Store) -> Vec<Finding> {
    let mut out = Vec::new();
    let versioned = versioning(s, &mut out).await;
    object_lock(s, &mut out).await;
    permissions(s, versioned, &mut out).await;
    out
}

fn finding(check: &str, ok: bool, detail: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        ok,
        detail: detail.into(),
        hint: hint.into(),
    }
}

/// Why a configuration could not be read.
fn unknown<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    perm: &str,
) -> String {
    if denied(e) {
        format!("unknown: this identity may not read it ({perm})")
    } else if e.code() == Some("NotImplemented") {
        "not supported by this S3 server".into()
    } else {
        format!("unknown: {}", short(e))
    }
}

type VersioningError = SdkError<
    aws_sdk_s3::operation::get_bucket_versioning::GetBucketVersioningError,
    aws_sdk_s3::config::http::HttpResponse,
>;

/// The versioning status S3 answered (`None`: never enabled). moto answers with another root
/// element than S3 (`GetBucketVersioningResponse`), which the SDK does not parse; the status
/// inside is the same, so it is read from the raw answer.
async fn versioning_status(s: &S3Store) -> Result<Option<String>, VersioningError> {
    match s
        .client
        .get_bucket_versioning()
        .bucket(&s.bucket)
        .send()
        .await
    {
        Ok(v) => Ok(v.status().map(|s| s.as_str().to_string())),
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 200 => {
            let body = String::from_utf8_lossy(e.raw().body().bytes().unwrap_or_default());
            Ok(["Enabled", "Suspended"]
                .into_iter()
                .find(|st| body.contains(&format!("<Status>{st}</Status>")))
                .map(str::to_string))
        }
        Err(e) => Err(e),
    }
}

/// Reports versioning; true when it is (or was) on.
async fn versioning(s: &S3Store, out: &mut Vec<Finding>) -> bool {
    match versioning_status(s).await {
        Ok(status) => {
            let on = status.as_deref() == Some("Enabled");
            out.push(finding(
                "versioning",
                on,
                match status.as_deref() {
                    Some(st) => st.to_lowercase(),
                    None => "never enabled".into(),
                },
                if on {
                    ""
                } else {
                    "without versioning a deleted or overwritten backup is gone; Object Lock needs it"
                },
            ));
            status.is_some()
        }
        Err(e) => {
            out.push(finding(
                "versioning",
                false,
                unknown(&e, "s3:GetBucketVersioning"),
                "",
            ));
            false
        }
    }
}

async fn object_lock(s: &S3Store, out: &mut Vec<Finding>) {
    let got = s
        .client
        .get_object_lock_configuration()
        .bucket(&s.bucket)
        .send()
        .await;
    let (ok, detail, hint) = match got {
        Ok(c) => {
            let c = c.object_lock_configuration();
            let on = c
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled");
            let default = c
                .and_then(|c| c.rule())
                .and_then(|r| r.default_retention())
                .map(|d| {
                    let mode = d
                        .mode()
                        .map(|m| m.as_str().to_lowercase())
                        .unwrap_or_default();
                    match (d.days(), d.years()) {
                        (Some(n), _) => format!("default retention {mode} {n} days"),
                        (_, Some(n)) => format!("default retention {mode} {n} years"),
                        _ => format!("default retention {mode}"),
                    }
                });
            match (on, default) {
                (true, Some(d)) => (true, format!("enabled, {d}"), String::new()),
                (true, None) => (
                    true,
                    "enabled, no default retention".to_string(),
                    "backups are locked only with backup create --object-lock".to_string(),
                ),
                (false, _) => (false, "not enabled".into(), NO_LOCK.into()),
            }
        }
        Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => {
            (false, "not enabled".into(), NO_LOCK.into())
        }
        Err(e) => (
            false,
            unknown(&e, "s3:GetBucketObjectLockConfiguration"),
            String::new(),
        ),
    };
    out.push(finding("object lock", ok, detail, hint));
}

const NO_LOCK: &str = "whoever holds s3:DeleteObject can delete every backup; Object Lock can only be enabled on a new bucket (docs/backup.md)";

/// A key under the prefix that no one writes (outside kirt's `.kirt/` bookkeeping, so that the
/// answer is the one backups get).
fn probe_key(s: &S3Store) -> String {
    s.key(&format!(
        "kirt-doctor-probe-{}-{:x}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ))
}

/// What each role needs this permission for.
const LIST: &str = "list, verify, prune, drill, copy --from and the cluster-prefix guard need it (the writer role does without)";
const READ: &str = "verify, restore, drill, prune and copy --from read manifests and objects (the writer role does without)";
const WRITE: &str = "backup create and copy --to write with it";
const DELETE: &str = "prune needs it; the backup writer should not have it";

async fn permissions(s: &S3Store, versioned: bool, out: &mut Vec<Finding>) {
    let key = probe_key(s);
    let listed = s
        .client
        .list_objects_v2()
        .bucket(&s.bucket)
        .prefix(s.key(""))
        .max_keys(1)
        .send()
        .await;
    let can_list = listed.is_ok();
    out.push(allowed("may list (s3:ListBucket)", listed.err(), LIST));

    let read = s
        .client
        .get_object()
        .bucket(&s.bucket)
        .key(&key)
        .send()
        .await;
    // a missing key answers 404 to who may read, 403 to who may not (and, on AWS, to who may
    // read but not list)
    let read = match read {
        Err(e) if e.code() == Some("NoSuchKey") || status(&e) == 404 => None,
        Ok(_) => None,
        Err(e) => Some(e),
    };
    let mut f = allowed("may read (s3:GetObject)", read, READ);
    if !f.ok && !can_list {
        f.detail.push_str(
            " (or only s3:ListBucket is missing: S3 then answers 403 for a missing key too)",
        );
    }
    out.push(f);

    let started = s
        .client
        .create_multipart_upload()
        .bucket(&s.bucket)
        .key(&key)
        .send()
        .await;
    match started {
        Ok(up) => {
            out.push(finding("may write (s3:PutObject)", true, "yes", WRITE));
            let aborted = s
                .client
                .abort_multipart_upload()
                .bucket(&s.bucket)
                .key(&key)
                .upload_id(up.upload_id().unwrap_or_default())
                .send()
                .await;
            out.push(allowed(
                "may abort uploads (s3:AbortMultipartUpload)",
                aborted.err(),
                "backup create and copy abort failed uploads with it",
            ));
        }
        Err(e) => out.push(allowed("may write (s3:PutObject)", Some(e), WRITE)),
    }

    // deleting a version that does not exist removes nothing and leaves no delete marker
    let (name, req) = if versioned {
        (
            "may delete versions (s3:DeleteObjectVersion)",
            s.client
                .delete_object()
                .bucket(&s.bucket)
                .key(&key)
                .version_id("kirt-doctor-probe-no-such-version"),
        )
    } else {
        (
            "may delete (s3:DeleteObject)",
            s.client.delete_object().bucket(&s.bucket).key(&key),
        )
    };
    let deleted = match req.send().await {
        Err(e) if !denied(&e) => None, // 400 for the made-up version id: the request was allowed
        r => r.err(),
    };
    out.push(allowed(name, deleted, DELETE));
}

fn status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> u16 {
    match e {
        SdkError::ServiceError(s) => s.raw().status().as_u16(),
        _ => 0,
    }
}

/// A permission tried: allowed unless the request was denied (other failures: unknown).
fn allowed<E: ProvideErrorMetadata>(
    check: &str,
    err: Option<SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    why: &str,
) -> Finding {
    match err {
        None => finding(check, true, "yes", why),
        Some(e) if denied(&e) => finding(check, false, "no (AccessDenied)", why),
        Some(e) => finding(check, false, format!("unknown: {}", short(&e)), why),
    }
}

/// An S3 error in a few words (a table cell, not a debug dump).
fn short<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match (e.code(), status(e)) {
        (Some(code), _) => code.to_string(),
        (None, 0) => "no answer".into(),
        (None, s) => format!("HTTP {s}, an answer kirt cannot read"),
    }
}
