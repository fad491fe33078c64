//! What this machine offers the scheduler.

use orch_api::pb;

/// What this machine has: all its CPUs (millicores) and memory (bytes), from
/// `/proc/meminfo`; what a node offers the scheduler unless told otherwise.
pub fn machine_capacity() -> pb::ResourceList {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches("kB").trim().to_owned())))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    pb::ResourceList { cpu_millis: cpus * 1000, memory_bytes: memory, pids: 0 }
}
