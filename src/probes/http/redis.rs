//! What Redis series are named by: the command and the error's type, each from a closed
//! set, so that a hostile client or server cannot add series by inventing names.

/// Redis's commands (7.x, plus a few of Redis Stack's and Valkey's common ones). Any
/// other name is reported as `_OTHER`, as the semantic conventions do with HTTP methods.
const COMMANDS: &[&str] = &[
    "ACL", "APPEND", "ASKING", "AUTH", "BGREWRITEAOF", "BGSAVE", "BITCOUNT", "BITFIELD",
    "BITFIELD_RO", "BITOP", "BITPOS", "BLMOVE", "BLMPOP", "BLPOP", "BRPOP", "BRPOPLPUSH",
    "BZMPOP", "BZPOPMAX", "BZPOPMIN", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "COPY",
    "DBSIZE", "DEBUG", "DECR", "DECRBY", "DEL", "DISCARD", "DUMP", "ECHO", "EVAL",
    "EVALSHA", "EVALSHA_RO", "EVAL_RO", "EXEC", "EXISTS", "EXPIRE", "EXPIREAT",
    "EXPIRETIME", "FAILOVER", "FCALL", "FCALL_RO", "FLUSHALL", "FLUSHDB", "FUNCTION",
    "GEOADD", "GEODIST", "GEOHASH", "GEOPOS", "GEORADIUS", "GEORADIUSBYMEMBER",
    "GEORADIUSBYMEMBER_RO", "GEORADIUS_RO", "GEOSEARCH", "GEOSEARCHSTORE", "GET", "GETBIT",
    "GETDEL", "GETEX", "GETRANGE", "GETSET", "HDEL", "HELLO", "HEXISTS", "HEXPIRE", "HGET",
    "HGETALL", "HINCRBY", "HINCRBYFLOAT", "HKEYS", "HLEN", "HMGET", "HMSET", "HPERSIST",
    "HRANDFIELD", "HSCAN", "HSET", "HSETNX", "HSTRLEN", "HTTL", "HVALS", "INCR", "INCRBY",
    "INCRBYFLOAT", "INFO", "KEYS", "LASTSAVE", "LATENCY", "LCS", "LINDEX", "LINSERT", "LLEN",
    "LMOVE", "LMPOP", "LOLWUT", "LPOP", "LPOS", "LPUSH", "LPUSHX", "LRANGE", "LREM", "LSET",
    "LTRIM", "MEMORY", "MGET", "MIGRATE", "MODULE", "MONITOR", "MOVE", "MSET", "MSETNX",
    "MULTI", "OBJECT", "PERSIST", "PEXPIRE", "PEXPIREAT", "PEXPIRETIME", "PFADD", "PFCOUNT",
    "PFMERGE", "PING", "PSETEX", "PSUBSCRIBE", "PSYNC", "PTTL", "PUBLISH", "PUBSUB",
    "PUNSUBSCRIBE", "QUIT", "RANDOMKEY", "READONLY", "READWRITE", "RENAME", "RENAMENX",
    "REPLCONF", "REPLICAOF", "RESET", "RESTORE", "ROLE", "RPOP", "RPOPLPUSH", "RPUSH",
    "RPUSHX", "SADD", "SAVE", "SCAN", "SCARD", "SCRIPT", "SDIFF", "SDIFFSTORE", "SELECT",
    "SET", "SETBIT", "SETEX", "SETNX", "SETRANGE", "SHUTDOWN", "SINTER", "SINTERCARD",
    "SINTERSTORE", "SISMEMBER", "SLAVEOF", "SLOWLOG", "SMEMBERS", "SMISMEMBER", "SMOVE",
    "SORT", "SORT_RO", "SPOP", "SPUBLISH", "SRANDMEMBER", "SREM", "SSCAN", "SSUBSCRIBE",
    "STRLEN", "SUBSCRIBE", "SUBSTR", "SUNION", "SUNIONSTORE", "SUNSUBSCRIBE", "SWAPDB",
    "SYNC", "TIME", "TOUCH", "TTL", "TYPE", "UNLINK", "UNSUBSCRIBE", "UNWATCH", "WAIT",
    "WAITAOF", "WATCH", "XACK", "XADD", "XAUTOCLAIM", "XCLAIM", "XDEL", "XGROUP", "XINFO",
    "XLEN", "XPENDING", "XRANGE", "XREAD", "XREADGROUP", "XREVRANGE", "XSETID", "XTRIM",
    "ZADD", "ZCARD", "ZCOUNT", "ZDIFF", "ZDIFFSTORE", "ZINCRBY", "ZINTER", "ZINTERCARD",
    "ZINTERSTORE", "ZLEXCOUNT", "ZMPOP", "ZMSCORE", "ZPOPMAX", "ZPOPMIN", "ZRANDMEMBER",
    "ZRANGE", "ZRANGEBYLEX", "ZRANGEBYSCORE", "ZRANGESTORE", "ZRANK", "ZREM",
    "ZREMRANGEBYLEX", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "ZREVRANGE", "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE", "ZREVRANK", "ZSCAN", "ZSCORE", "ZUNION", "ZUNIONSTORE",
    "JSON.GET", "JSON.SET", "JSON.DEL", "JSON.MGET", "FT.SEARCH", "FT.AGGREGATE",
];

/// The prefixes Redis and its proxies start error replies with.
const ERRORS: &[&str] = &[
    "ERR", "WRONGTYPE", "NOAUTH", "WRONGPASS", "NOPERM", "MOVED", "ASK", "TRYAGAIN",
    "CROSSSLOT", "CLUSTERDOWN", "LOADING", "BUSY", "BUSYKEY", "BUSYGROUP", "NOSCRIPT",
    "READONLY", "MASTERDOWN", "MISCONF", "NOREPLICAS", "OOM", "EXECABORT", "NOGROUP",
    "NOPROTO", "UNBLOCKED", "UNKILLABLE", "NOTBUSY", "NOREPLICAOF", "NOTREADY", "INVALIDOBJ",
];

/// What stands for a name outside the known set.
pub const OTHER: &str = "_OTHER";

/// The `db_operation_name` of a command as sent (upper-cased).
pub fn command_name(name: &str) -> &'static str {
    known(COMMANDS, name)
}

/// The `error_type` of an exchange: empty when it succeeded, the error's prefix when it
/// is a known one.
pub fn error_type(failed: bool, prefix: &str) -> &'static str {
    if failed {
        known(ERRORS, prefix)
    } else {
        ""
    }
}

fn known(names: &[&'static str], name: &str) -> &'static str {
    names
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_closed_sets_whatever_a_client_sends() {
        assert_eq!(command_name("GET"), "GET");
        assert_eq!(command_name("json.get"), "JSON.GET");
        assert_eq!(command_name("GET\r\n"), OTHER);
        assert_eq!(command_name("\u{1b}[31mX"), OTHER);
        assert_eq!(command_name(""), OTHER);
        assert_eq!(error_type(false, "WRONGTYPE"), "");
        assert_eq!(error_type(true, "WRONGTYPE"), "WRONGTYPE");
        assert_eq!(error_type(true, "MADEUP"), OTHER);
        assert_eq!(error_type(true, ""), OTHER);
    }

    #[test]
    fn user_space_keeps_every_known_name_whole() {
        // The kernel hands longer names than its 16 bytes to user space, which keeps 32.
        for name in COMMANDS.iter().chain(ERRORS) {
            assert!(name.len() <= 32, "{name}");
        }
    }
}
