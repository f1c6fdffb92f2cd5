//! Keys made with the real CLIs (age-keygen, ssh-keygen), in the test's temp dir.

use super::{sh, unique, Lab};

/// A new age X25519 identity: (identity file, recipient `age1…`).
pub fn age_key(lab: &Lab) -> (String, String) {
    let key = lab.dir.path().join(unique("age")).with_extension("key");
    sh(&format!("age-keygen -o {} 2>/dev/null", key.display())).ok();
    let public = sh(&format!("age-keygen -y {}", key.display()))
        .ok()
        .stdout()
        .trim()
        .to_string();
    (key.display().to_string(), public)
}

/// A new unencrypted ed25519 SSH key: (private key file, public key line).
pub fn ssh_key(lab: &Lab) -> (String, String) {
    let key = lab.dir.path().join(unique("id_ed25519"));
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -C kirt-test -f {}",
        key.display()
    ))
    .ok();
    let public = std::fs::read_to_string(format!("{}.pub", key.display()))
        .unwrap()
        .trim()
        .to_string();
    (key.display().to_string(), public)
}

/// A new unencrypted minisign key pair made by `kirt keygen`: (secret key file, public key file).
/// (Keys made by the minisign CLI with a password take 1 GiB and seconds of scrypt to open; the
/// interoperability test uses those.)
pub fn signing_keys(lab: &Lab) -> (String, String) {
    let base = lab.dir.path().join(unique("minisign"));
    let (sk, pk) = (
        format!("{}.key", base.display()),
        format!("{}.pub", base.display()),
    );
    lab.kirt(["keygen", "-s", &sk, "-p", &pk]).ok();
    (sk, pk)
}
