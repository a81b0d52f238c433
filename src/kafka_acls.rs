//! ACLs on the secured Apache Kafka broker (`ApacheKafka::start_secured`, whose authorizer is
//! Kafka's `StandardAuthorizer`): added and removed with librdkafka's admin calls (`CreateAcls`,
//! `DeleteAcls`) through its plaintext listener, whose principal is a super user. Apache
//! Kafka's own `kafka-acls.sh` lives in a jar the tests do not install.

use std::ffi::{CStr, CString};
use std::ptr;

use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::SecuredKafka;

/// One ACL on a topic (a literal name): `permission` of `operation` to `principal`
/// (`User:bob`, `User:*`) from any host.
#[derive(Clone, Copy, Debug)]
pub struct TopicAcl<'a> {
    pub topic: &'a str,
    pub principal: &'a str,
    pub operation: rd::rd_kafka_AclOperation_t,
    pub allow: bool,
}

impl SecuredKafka {
    /// Adds `acls`; panics with the broker's reason if one is refused.
    pub fn add_acls(&self, acls: &[TopicAcl<'_>]) {
        self.change_acls(acls, Change::Add);
    }

    /// Removes `acls` (each matched exactly); panics with the broker's reason if one fails.
    pub fn remove_acls(&self, acls: &[TopicAcl<'_>]) {
        self.change_acls(acls, Change::Remove);
    }

    fn change_acls(&self, acls: &[TopicAcl<'_>], change: Change) {
        let client: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.broker.bootstrap)
            .create()
            .expect("an admin client on the plaintext listener");
        let rk = client.client().native_ptr();
        let strings: Vec<[CString; 2]> = acls
            .iter()
            .map(|acl| [acl.topic, acl.principal].map(|s| CString::new(s).expect("no NUL")))
            .collect();
        let host = c"*";
        let mut errstr = [0 as std::ffi::c_char; 512];
        // SAFETY: every pointer passed is valid for the call (the strings outlive the bindings,
        // which librdkafka copies them into); the bindings, the queue and the event are
        // destroyed once, below, after their last use.
        unsafe {
            let mut bindings: Vec<*mut rd::rd_kafka_AclBinding_t> = acls
                .iter()
                .zip(&strings)
                .map(|(acl, [topic, principal])| {
                    let new = match change {
                        Change::Add => rd::rd_kafka_AclBinding_new,
                        Change::Remove => rd::rd_kafka_AclBindingFilter_new,
                    };
                    let binding = new(
                        rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                        topic.as_ptr(),
                        rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                        principal.as_ptr(),
                        host.as_ptr(),
                        acl.operation,
                        if acl.allow {
                            rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW
                        } else {
                            rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_DENY
                        },
                        errstr.as_mut_ptr(),
                        errstr.len(),
                    );
                    assert!(
                        !binding.is_null(),
                        "ACL {acl:?}: {}",
                        CStr::from_ptr(errstr.as_ptr()).to_string_lossy()
                    );
                    binding
                })
                .collect();
            let queue = rd::rd_kafka_queue_new(rk);
            match change {
                Change::Add => {
                    rd::rd_kafka_CreateAcls(rk, bindings.as_mut_ptr(), bindings.len(), ptr::null(), queue)
                }
                Change::Remove => {
                    rd::rd_kafka_DeleteAcls(rk, bindings.as_mut_ptr(), bindings.len(), ptr::null(), queue)
                }
            }
            let event = rd::rd_kafka_queue_poll(queue, 30_000);
            assert!(!event.is_null(), "{change:?} ACLs {acls:?}: no answer in 30 s");
            let failures = failures(event, change);
            rd::rd_kafka_event_destroy(event);
            rd::rd_kafka_queue_destroy(queue);
            rd::rd_kafka_AclBinding_destroy_array(bindings.as_mut_ptr(), bindings.len());
            assert!(failures.is_empty(), "{change:?} ACLs {acls:?}: {failures:?}");
        }
        client.flush(std::time::Duration::from_secs(1)).ok();
    }
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Add,
    Remove,
}

/// What failed, as the broker said it, in the answer `event` to a change of ACLs.
///
/// # Safety
///
/// `event` is the (not yet destroyed) answer to a `CreateAcls` (`Add`) or `DeleteAcls`
/// (`Remove`) call.
unsafe fn failures(event: *mut rd::rd_kafka_event_t, change: Change) -> Vec<String> {
    let text = |error: *const rd::rd_kafka_error_t| {
        CStr::from_ptr(rd::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned()
    };
    if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return vec![CStr::from_ptr(rd::rd_kafka_event_error_string(event))
            .to_string_lossy()
            .into_owned()];
    }
    let mut count = 0;
    let errors: Vec<*const rd::rd_kafka_error_t> = match change {
        Change::Add => {
            let result = rd::rd_kafka_event_CreateAcls_result(event);
            let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut count);
            (0..count)
                .map(|index| rd::rd_kafka_acl_result_error(*results.add(index)))
                .collect()
        }
        Change::Remove => {
            let result = rd::rd_kafka_event_DeleteAcls_result(event);
            let responses = rd::rd_kafka_DeleteAcls_result_responses(result, &mut count);
            (0..count)
                .map(|index| rd::rd_kafka_DeleteAcls_result_response_error(*responses.add(index)))
                .collect()
        }
    };
    errors
        .into_iter()
        .filter(|error| !error.is_null())
        .map(text)
        .collect()
}
