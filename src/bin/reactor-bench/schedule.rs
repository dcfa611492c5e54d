//! The open loop's schedule: requests leave at their intended times.

use std::cmp::Reverse;

use crate::load::{Worker, now_ns};

impl Worker {
    /// Open loop: send every request whose time has come.
    pub(crate) fn send_due(&mut self) {
        let now = now_ns(&self.shared);
        while let Some(&Reverse((t, key, id))) = self.schedule.peek() {
            if t > now {
                break;
            }
            self.schedule.pop();
            // The slot is empty or holds a later connection: this entry's connection
            // is gone, and so is its schedule.
            let Some(c) = self.clients.get(key).filter(|c| c.id == id) else {
                continue;
            };
            if !self.may_send(c) {
                continue;
            }
            Worker::push_request(&self.opts, &mut self.clients[key], t);
            self.schedule.push(Reverse((t + self.interval_ns, key, id)));
            self.after_io(key);
        }
    }
}
