//! Caps in the `routes` dataplane: a tbf qdisc per capped interface,
//! configured through rtnetlink. Egress caps sit on the container's own
//! interface (inside its namespace), so its TCP feels the queue as
//! backpressure; ingress caps sit on the host-side veth.
//!
//! netwarp's qdiscs carry the handle [`NETWARP_QDISC_MAJOR`]`:0`; netwarp
//! only replaces a root qdisc that is the kernel's default or its own, and
//! only deletes its own.

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_core::{
        DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    },
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcHandle, TcMessage, TcOption, TcStats2},
    },
};

use crate::model::Cap;

/// Major number of netwarp's qdisc handles ("NW").
pub const NETWARP_QDISC_MAJOR: u16 = 0x4e57;

/// tbf attributes (linux/pkt_sched.h).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// `tc_ratespec.linklayer`: Ethernet, so the kernel needs no rate table.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// Queue allowed behind the bucket, as time at the rate.
const QUEUE_MILLIS: u64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    #[error("netlink {operation} on interface {ifindex} failed: {source}")]
    Netlink {
        operation: &'static str,
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(
        "interface {ifindex} already has a root qdisc `{kind}` that netwarp did not make; \
         netwarp will not replace it, so the cap is not enforced there (remove that qdisc \
         or the cap label)"
    )]
    Foreign { ifindex: u32, kind: String },
}

/// The root qdisc of an interface, as netwarp sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootQdisc {
    /// The kernel's default (noqueue, pfifo_fast, ...), or none.
    Default,
    /// netwarp's tbf.
    Ours,
    Foreign(String),
}

/// The `TCA_OPTIONS` of a tbf enforcing `cap`.
pub fn tbf_options(cap: &Cap) -> Vec<TcOption> {
    let rate = cap.rate.bytes_per_second();
    let burst = u32::try_from(cap.burst_bytes).unwrap_or(u32::MAX);
    let limit = rate
        .saturating_mul(QUEUE_MILLIS)
        .div_ceil(1000)
        .saturating_add(cap.burst_bytes);
    // struct tc_tbf_qopt: rate and peak tc_ratespec (12 bytes each), then
    // limit, buffer and mtu. The burst goes in TCA_TBF_BURST, which the
    // kernel converts to time itself; buffer and mtu stay 0 (no peak rate).
    let mut parms = Vec::with_capacity(36);
    parms.push(0); // cell_log
    parms.push(TC_LINKLAYER_ETHERNET);
    parms.extend_from_slice(&[0; 6]); // overhead, cell_align, mpu
    parms.extend_from_slice(&u32::try_from(rate).unwrap_or(u32::MAX).to_ne_bytes());
    parms.extend_from_slice(&[0; 12]); // peakrate
    parms.extend_from_slice(&u32::try_from(limit).unwrap_or(u32::MAX).to_ne_bytes());
    parms.extend_from_slice(&[0; 8]); // buffer, mtu
    vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, parms)),
        TcOption::Other(DefaultNla::new(TCA_TBF_RATE64, rate.to_ne_bytes().to_vec())),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())),
    ]
}

/// Every qdisc in the namespace `handle` is bound to, or of one interface.
async fn dump(handle: &Handle, ifindex: Option<u32>) -> Result<Vec<TcMessage>, QdiscError> {
    let mut request = handle.qdisc().get();
    if let Some(ifindex) = ifindex {
        request = request.index(ifindex as i32);
    }
    request
        .execute()
        .try_collect()
        .await
        .map_err(|source| QdiscError::Netlink {
            operation: "qdisc dump",
            ifindex: ifindex.unwrap_or(0),
            source,
        })
}

/// The kind of a qdisc (`tbf`, `noqueue`, ...); empty when not given.
fn kind(qdisc: &TcMessage) -> String {
    qdisc
        .attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(kind) => Some(kind.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether `qdisc` is netwarp's: a root tbf under netwarp's handle.
fn is_ours(qdisc: &TcMessage) -> bool {
    qdisc.header.parent == TcHandle::ROOT
        && qdisc.header.handle.major == NETWARP_QDISC_MAJOR
        && kind(qdisc) == "tbf"
}

/// A message for the root qdisc netwarp owns on `ifindex`.
fn our_root(ifindex: u32) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::ROOT;
    message.header.handle = TcHandle {
        major: NETWARP_QDISC_MAJOR,
        minor: 0,
    };
    message
}

/// What is at the root of `ifindex`.
pub async fn root_qdisc(handle: &Handle, ifindex: u32) -> Result<RootQdisc, QdiscError> {
    let root = dump(handle, Some(ifindex))
        .await?
        .into_iter()
        .find(|q| q.header.index == ifindex as i32 && q.header.parent == TcHandle::ROOT);
    let Some(root) = root else {
        return Ok(RootQdisc::Default);
    };
    let kind = kind(&root);
    Ok(if is_ours(&root) {
        RootQdisc::Ours
    } else if matches!(
        kind.as_str(),
        "noqueue" | "pfifo_fast" | "fq_codel" | "mq" | ""
    ) && root.header.handle.major == 0
    {
        RootQdisc::Default
    } else {
        RootQdisc::Foreign(kind)
    })
}

/// Puts (or updates in place) netwarp's tbf for `cap` at the root of
/// `ifindex`. An update keeps the queue, so connections are not dropped.
pub async fn put_tbf(handle: &Handle, ifindex: u32, cap: &Cap) -> Result<(), QdiscError> {
    if let RootQdisc::Foreign(kind) = root_qdisc(handle, ifindex).await? {
        return Err(QdiscError::Foreign { ifindex, kind });
    }
    let mut message = our_root(ifindex);
    message
        .attributes
        .push(TcAttribute::Kind("tbf".to_string()));
    message
        .attributes
        .push(TcAttribute::Options(tbf_options(cap)));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    send(handle, request, "tbf replace", ifindex).await
}

/// Removes netwarp's tbf from `ifindex`, if it is there.
pub async fn remove_tbf(handle: &Handle, ifindex: u32) -> Result<bool, QdiscError> {
    if root_qdisc(handle, ifindex).await? != RootQdisc::Ours {
        return Ok(false);
    }
    delete_ours(handle, ifindex).await?;
    Ok(true)
}

async fn delete_ours(handle: &Handle, ifindex: u32) -> Result<(), QdiscError> {
    let mut request =
        NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(our_root(ifindex)));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    send(handle, request, "tbf delete", ifindex).await
}

/// Packets netwarp's tbf qdiscs dropped, by ifindex, in the namespace
/// `handle` is bound to (the kernel counts no dropped bytes for them).
pub async fn tbf_drops(handle: &Handle) -> Result<std::collections::HashMap<u32, u64>, QdiscError> {
    Ok(dump(handle, None)
        .await?
        .iter()
        .filter(|q| is_ours(q))
        .map(|q| {
            let drops = q.attributes.iter().find_map(|a| match a {
                TcAttribute::Stats2(stats) => stats.iter().find_map(|s| match s {
                    TcStats2::Queue(queue) => Some(u64::from(queue.drops)),
                    _ => None,
                }),
                TcAttribute::Stats(stats) => Some(u64::from(stats.drops)),
                _ => None,
            });
            (q.header.index as u32, drops.unwrap_or(0))
        })
        .collect())
}

/// Removes netwarp's tbf from every interface of the namespace `handle`
/// is bound to; returns how many it removed.
pub async fn remove_every_tbf(handle: &Handle) -> Result<usize, QdiscError> {
    let ours: Vec<u32> = dump(handle, None)
        .await?
        .iter()
        .filter(|q| is_ours(q))
        .map(|q| q.header.index as u32)
        .collect();
    for ifindex in &ours {
        delete_ours(handle, *ifindex).await?;
    }
    Ok(ours.len())
}

async fn send(
    handle: &Handle,
    request: NetlinkMessage<RouteNetlinkMessage>,
    operation: &'static str,
    ifindex: u32,
) -> Result<(), QdiscError> {
    let error = |source| QdiscError::Netlink {
        operation,
        ifindex,
        source,
    };
    let mut responses = handle.clone().request(request).map_err(error)?;
    use futures_util::StreamExt as _;
    while let Some(message) = responses.next().await {
        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = message.payload
            && e.code.is_some()
        {
            return Err(error(rtnetlink::Error::NetlinkError(e)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Rate, parse_rate};

    fn option_bytes(options: &[TcOption], kind: u16) -> Vec<u8> {
        options
            .iter()
            .find_map(|o| match o {
                TcOption::Other(nla) if rtnetlink::packet_core::Nla::kind(nla) == kind => {
                    let mut buf = vec![0; rtnetlink::packet_core::Nla::value_len(nla)];
                    rtnetlink::packet_core::Nla::emit_value(nla, &mut buf);
                    Some(buf)
                }
                _ => None,
            })
            .expect("option present")
    }

    #[test]
    fn tbf_options_encode_rate_burst_and_queue_limit() {
        let cap = Cap::new(parse_rate("20mbit").unwrap(), Some(64 << 10));
        let options = tbf_options(&cap);
        let parms = option_bytes(&options, TCA_TBF_PARMS);
        assert_eq!(parms.len(), 36);
        assert_eq!(parms[1], TC_LINKLAYER_ETHERNET);
        let u32_at = |at: usize| u32::from_ne_bytes(parms[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(8), 2_500_000, "rate in bytes/s");
        assert_eq!(
            u32_at(24),
            125_000 + 65_536,
            "50 ms of queue plus the burst"
        );
        let burst = option_bytes(&options, TCA_TBF_BURST);
        assert_eq!(u32::from_ne_bytes(burst.try_into().unwrap()), 65_536);
        let rate64 = option_bytes(&options, TCA_TBF_RATE64);
        assert_eq!(u64::from_ne_bytes(rate64.try_into().unwrap()), 2_500_000);
    }

    #[test]
    fn rates_beyond_32_bits_use_rate64() {
        let cap = Cap::new(Rate::from_bits_per_second(100_000_000_000), None);
        let options = tbf_options(&cap);
        let parms = option_bytes(&options, TCA_TBF_PARMS);
        assert_eq!(
            u32::from_ne_bytes(parms[8..12].try_into().unwrap()),
            u32::MAX
        );
        let rate64 = option_bytes(&options, TCA_TBF_RATE64);
        assert_eq!(
            u64::from_ne_bytes(rate64.try_into().unwrap()),
            12_500_000_000
        );
    }
}
