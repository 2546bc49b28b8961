package ingest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// TestHotPresenceRecovers: after Redis lost the presence hash (a restart
// without persistence), the connected devices are written again within the
// resync interval, without any device reconnecting.
func TestHotPresenceRecovers(t *testing.T) {
	url := os.Getenv("NXCLOUD_TEST_REDIS_URL")
	if url == "" {
		t.Fatal("NXCLOUD_TEST_REDIS_URL is not set: run the tests with `make test`")
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	h := NewHot(rdb, 10*time.Millisecond, nil)
	defer h.Close()
	h.mu.Lock()
	h.resyncEvery = 50 * time.Millisecond
	h.mu.Unlock()
	tenant, dev := uuid.New(), uuid.New()
	ctx := context.Background()
	defer rdb.Del(ctx, OnlineKey(tenant))
	h.Connected(tenant, dev, true)
	wait := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if ok, _ := rdb.HExists(ctx, OnlineKey(tenant), dev.String()).Result(); ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("presence not in Redis %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("after connecting")
	rdb.Del(ctx, OnlineKey(tenant)) // what a Redis restart loses
	wait("after Redis lost it")
	h.Connected(tenant, dev, false)
	time.Sleep(200 * time.Millisecond)
	if ok, _ := rdb.HExists(ctx, OnlineKey(tenant), dev.String()).Result(); ok {
		t.Fatal("a disconnected device is written back as online")
	}
}
