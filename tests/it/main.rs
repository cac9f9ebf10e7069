//! The one integration-test binary: real sockets on 127.0.0.1, real peers.

mod crelay;
