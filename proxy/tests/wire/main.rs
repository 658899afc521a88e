#![allow(unreachable_pub)]
//! Black-box tests of the proxy over real sockets on 127.0.0.1: real demo backends behind a
//! real proxy, driven by real HTTP/1.1, h2c and h2-over-TLS clients.

mod access_log;
mod admin;
mod balancing;
mod blame;
mod fault;
mod filter_chains;
mod flood;
mod fuzz;
mod health_view;
mod host;
mod hostile;
mod mirror;
mod protocols;
mod ratelimit;
mod reload;
mod resilience;
mod route_actions;
mod routing;
mod support;
mod tcp_proxy;
mod tracing;
mod upstream_h1;
mod upstream_tls;
