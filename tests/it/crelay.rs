//! carbon_ch against carbon-c-relay -t (being written).
