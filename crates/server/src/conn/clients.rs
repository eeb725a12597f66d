//! Open connections per client address: a connection over the limit is
//! refused at accept, before it costs a task or a buffer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Counts of open connections by client address.
#[derive(Debug)]
pub struct ClientSlots {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in [`ClientSlots`]; given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ClientSlots {
    pub fn new(max: usize) -> ClientSlots {
        ClientSlots {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for a new connection from `ip`, or `None` when it already
    /// holds `max`. IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn take(&self, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            ip,
            open: self.open.clone(),
        })
    }

    /// Addresses with at least one open connection.
    pub fn clients(&self) -> usize {
        self.open.lock().len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = slots.take(a).unwrap();
        let s2 = slots.take(mapped).unwrap();
        assert!(slots.take(a).is_none(), "a third connection from a");
        assert!(
            slots.take(mapped).is_none(),
            "the same address, IPv6-mapped"
        );
        let s3 = slots.take(b).unwrap();
        drop(s1);
        let s4 = slots.take(a).unwrap();
        assert_eq!(slots.clients(), 2);
        drop((s2, s3, s4));
        assert_eq!(
            slots.clients(),
            0,
            "closed connections leave nothing behind"
        );
    }
}
