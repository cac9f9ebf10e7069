//! Numbers printed as JavaScript prints them.
