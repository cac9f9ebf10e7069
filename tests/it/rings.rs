//! rings
