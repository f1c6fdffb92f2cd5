//! Being a good neighbour on a control-plane node (`backup create --nice`): kirt's CPU and I/O
//! come after etcd's and the apiserver's. Linux keeps both priorities per thread, so every
//! thread that exists is lowered; threads started later inherit it from the one that starts them.

/// nice value kirt takes with `--nice` (0 is the default, 19 the lowest priority).
pub const NICE: i32 = 10;

const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_IDLE: libc::c_int = 3;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;

/// Lowers CPU priority to `NICE` and puts I/O into the idle class for every thread of this
/// process. Never fails the run: a refusal (seccomp, an old kernel) is a warning.
pub fn lower() {
    let tasks: Vec<libc::id_t> = match std::fs::read_dir("/proc/self/task") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "--nice: cannot list this process's threads; priority unchanged");
            return;
        }
    };
    for tid in tasks {
        // SAFETY: plain syscalls on this process's own threads; no memory is passed.
        let (cpu, io) = unsafe {
            (
                libc::setpriority(libc::PRIO_PROCESS, tid, NICE),
                libc::syscall(
                    libc::SYS_ioprio_set,
                    IOPRIO_WHO_PROCESS,
                    tid as libc::c_int,
                    IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
                ),
            )
        };
        if cpu != 0 || io != 0 {
            // a thread that ended meanwhile is no loss
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(error = %e, tid, "--nice: could not lower this thread's priority");
            }
        }
    }
    tracing::debug!(nice = NICE, io_class = "idle", "priority lowered");
}
