//! The proxy-wasm contexts: one root context per Envoy worker (configuration,
//! outbox, flushing) and one HTTP context per request (reading headers).

use std::{
    cell::RefCell,
    collections::HashMap,
    rc::Rc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apitrace_proto::{
    Endpoint, GrpcCall, SESSION_TOKEN_HEADER, TrafficDirection, WASM_INGEST_PATH, WasmEvent,
    filter_config::Config,
};
use proxy_wasm::{
    traits::{Context, HttpContext, RootContext},
    types::{Action, ContextType, LogLevel},
};

use crate::{
    auth,
    grpc::{self, MessageCounter},
    queue::Outbox,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    outbox: Option<Rc<RefCell<Outbox>>>,
    /// Dispatched batches not yet answered: token -> what each stands for.
    in_flight: HashMap<u32, u64>,
}

impl Root {
    fn flush(&mut self) {
        let (Some(config), Some(outbox)) = (self.config.clone(), self.outbox.clone()) else {
            return;
        };
        while self.in_flight.len() < config.max_in_flight {
            let Some(batch) = outbox.borrow_mut().take_batch(config.batch_max_events) else {
                return;
            };
            let headers = vec![
                (":method", "POST"),
                (":path", WASM_INGEST_PATH),
                (":authority", config.ingest_authority.as_str()),
                ("content-type", "application/x-protobuf"),
                (SESSION_TOKEN_HEADER, config.session_token.as_str()),
            ];
            match self.dispatch_http_call(
                &config.ingest_cluster,
                headers,
                Some(&batch.body),
                vec![],
                config.timeout(),
            ) {
                Ok(token) => {
                    self.in_flight.insert(token, batch.undelivered);
                }
                Err(status) => {
                    proxy_wasm::hostcalls::log(
                        LogLevel::Warn,
                        &format!(
                            "apitrace: cannot reach the probe through {}: {status:?}",
                            config.ingest_cluster
                        ),
                    )
                    .ok();
                    outbox.borrow_mut().count_lost(batch.undelivered);
                    return;
                }
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let undelivered = self.in_flight.remove(&token).unwrap_or(0);
        let accepted = self
            .get_http_call_response_header(":status")
            .is_some_and(|status| status.starts_with('2'));
        if !accepted {
            if let Some(outbox) = &self.outbox {
                outbox.borrow_mut().count_lost(undelivered);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.set_tick_period(config.flush_interval());
                self.outbox = Some(Rc::new(RefCell::new(Outbox::new(config.queue_max_bytes))));
                self.config = Some(Rc::new(config));
                true
            }
            Err(message) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.flush();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            config: self.config.clone()?,
            outbox: self.outbox.clone()?,
            event: WasmEvent::default(),
            grpc: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    config: Rc<Config>,
    outbox: Rc<RefCell<Outbox>>,
    event: WasmEvent,
    /// The request's and the response's message counts, for a gRPC request.
    grpc: Option<[MessageCounter; 2]>,
}

impl Request {
    fn header(&self, name: &str) -> String {
        self.get_http_request_header(name).unwrap_or_default()
    }

    fn address_property(&self, name: &str) -> Option<Endpoint> {
        let bytes = self.get_property(vec![name, "address"])?;
        let text = String::from_utf8(bytes).ok()?;
        let address: std::net::SocketAddr = text.parse().ok()?;
        Some(Endpoint::new(
            address.ip().to_string(),
            u32::from(address.port()),
        ))
    }

    /// Notes a gRPC status (`grpc-status`, `grpc-message`) the response's
    /// headers (Trailers-Only) or trailers carry.
    fn note_grpc_status(&mut self, status: Option<String>, message: Option<String>) {
        if let (Some(call), Some(status)) = (self.event.grpc.as_mut(), status) {
            call.status = status.trim().parse().ok();
            call.message = message.unwrap_or_default();
        }
    }

    /// Envoy's listener direction attribute: an int64, 1 inbound, 2 outbound.
    /// `xds.listener_direction` in current Envoys; older ones (and older Istio
    /// proxies) only know the legacy `listener_direction`.
    fn listener_direction(&self) -> TrafficDirection {
        let bytes = self
            .get_property(vec!["xds", "listener_direction"])
            .or_else(|| self.get_property(vec!["listener_direction"]))
            .unwrap_or_default();
        match bytes.try_into().map(i64::from_le_bytes) {
            Ok(1) => TrafficDirection::Inbound,
            Ok(2) => TrafficDirection::Outbound,
            _ => TrafficDirection::Unspecified,
        }
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let now = self.get_current_time();
        self.event = WasmEvent {
            time_unix_nano: unix_nanos(now),
            request_id: self.header("x-request-id"),
            method: self.header(":method"),
            path: self.header(":path"),
            authority: self.header(":authority"),
            source: self.address_property("source"),
            destination: self.address_property("destination"),
            listener_direction: self.listener_direction().into(),
            auth: self
                .get_http_request_header("authorization")
                .map(|value| auth::describe(&value, self.config.show_secrets)),
            grpc: grpc::is_grpc(&self.header("content-type")).then(GrpcCall::default),
            ..WasmEvent::default()
        };
        self.grpc = self.event.grpc.as_ref().map(|_| Default::default());
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some([request, _]) = self.grpc.as_mut() {
            request.feed(body_size, |start, len| {
                proxy_wasm::hostcalls::get_buffer(
                    proxy_wasm::types::BufferType::HttpRequestBody,
                    start,
                    len,
                )
                .ok()
                .flatten()
            });
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some([_, response]) = self.grpc.as_mut() {
            response.feed(body_size, |start, len| {
                proxy_wasm::hostcalls::get_buffer(
                    proxy_wasm::types::BufferType::HttpResponseBody,
                    start,
                    len,
                )
                .ok()
                .flatten()
            });
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        let status = self.get_http_response_trailer("grpc-status");
        let message = self.get_http_response_trailer("grpc-message");
        self.note_grpc_status(status, message);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.event.status = self
            .get_http_response_header(":status")
            .and_then(|status| status.parse().ok())
            .unwrap_or(0);
        let status = self.get_http_response_header("grpc-status");
        let message = self.get_http_response_header("grpc-message");
        self.note_grpc_status(status, message);
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.event.time_unix_nano != 0 {
            self.event.duration_ns =
                unix_nanos(self.get_current_time()) - self.event.time_unix_nano;
            if let (Some(call), Some([request, response])) = (self.event.grpc.as_mut(), &self.grpc)
            {
                call.request_messages = request.messages();
                call.response_messages = response.messages();
            }
            self.outbox
                .borrow_mut()
                .push(std::mem::take(&mut self.event));
        }
    }
}

fn unix_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos()
        .try_into()
        .unwrap_or(i64::MAX)
}
