//! `orch-agent`: container runtime, images, networking, probes and supervision (to come).
