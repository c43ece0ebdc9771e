//! systemd integration for `Type=notify`: `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`,
//! `RELOADING=1`. Every call is a no-op without `NOTIFY_SOCKET`; a failed send is logged once
//! per kind and never stops the daemon.

use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

pub fn reloading() {
    // systemd wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); harmless otherwise.
    match NotifyState::monotonic_usec_now() {
        Ok(m) => send(&[NotifyState::Reloading, m]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Half of `WATCHDOG_USEC`, when systemd asks for keep-alives.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
