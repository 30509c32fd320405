//! `regent agent --windows-service`: the agent under the Windows service
//! control manager (SCM). `packaging/windows/install.ps1` registers the
//! service with this command line.
//!
//! The SCM's Stop and Shutdown controls resolve the same shutdown future that
//! SIGTERM resolves on Unix, so in-flight requests finish and the pipe is
//! removed exactly as in the foreground. The service reports `Running` only
//! once the named pipe accepts connections.

// `define_windows_service!` expands to the `extern "system"` entry point the
// SCM calls, which converts its raw argument vector with an `unsafe` block.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use regent_proto::ErrorCode;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};

use crate::agent::AgentArgs;
use crate::failure::internal;
use crate::{Cli, Command};
use regent_client::Error;

/// The service name `install.ps1` registers.
pub const SERVICE_NAME: &str = "regent";

/// The agent's arguments and socket override, taken once by the service main.
type Launch = (AgentArgs, Option<std::path::PathBuf>);

/// What the service main needs: the SCM passes it no process arguments.
static LAUNCH: OnceLock<Mutex<Option<Launch>>> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Hands the main thread to the SCM dispatcher until the service stops.
pub fn run(cli: Cli) -> Result<(), Error> {
    let Command::Agent(args) = cli.command else {
        return Err(Error::new(ErrorCode::Internal, "not an agent command"));
    };
    let _ = LAUNCH.set(Mutex::new(Some((args, cli.globals.socket))));
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!(
                "cannot reach the service control manager ({e}); --windows-service is only for the command line of the installed service — run `regent agent` in a console instead"
            ),
        )
    })
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(failure) = run_service() {
        // The log subscriber may not be up yet; stderr goes nowhere under the
        // SCM, but the exit code below tells `sc query`.
        eprintln!("regent: {}", failure.report());
    }
}

fn status(state: ServiceState, accept: ServiceControlAccept, exit: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accept,
        // NO_ERROR unless stopping on a failure: a running service that
        // reports ERROR_SERVICE_SPECIFIC_ERROR is taken as failed by callers
        // that read the exit code (Wine's msiexec StartServices did).
        exit_code: if exit == 0 {
            ServiceExitCode::NO_ERROR
        } else {
            ServiceExitCode::ServiceSpecific(exit)
        },
        checkpoint: 0,
        wait_hint: Duration::from_secs(15),
        process_id: None,
    }
}

fn run_service() -> Result<(), Error> {
    let launch = LAUNCH
        .get()
        .and_then(|cell| cell.lock().ok().and_then(|mut slot| slot.take()));
    let Some((args, socket)) = launch else {
        return Err(Error::new(
            ErrorCode::Internal,
            "the service started twice in one process",
        ));
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Mutex::new(Some(stop_tx));
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Some(tx) = stop_tx.lock().ok().and_then(|mut tx| tx.take()) {
                let _ = tx.send(());
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(SERVICE_NAME, handler)
        .map_err(|e| internal("cannot register the service control handler", e))?;
    let handle = Arc::new(handle);
    let _ = handle.set_service_status(status(
        ServiceState::StartPending,
        ServiceControlAccept::empty(),
        0,
    ));
    let ready_handle = Arc::clone(&handle);
    let on_ready: Box<dyn FnOnce() + Send> = Box::new(move || {
        let _ = ready_handle.set_service_status(status(
            ServiceState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            0,
        ));
    });
    let result = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(crate::agent::run_until(
            args,
            socket,
            async {
                let _ = stop_rx.await;
            },
            Some(on_ready),
        )),
        Err(e) => Err(internal("cannot start the async runtime", e)),
    };
    let exit = match &result {
        Ok(()) => 0,
        Err(failure) => u32::from(failure.code.number()),
    };
    let _ = handle.set_service_status(status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        exit,
    ));
    result
}
