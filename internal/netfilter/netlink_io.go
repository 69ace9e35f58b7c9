package netfilter

// Kernel I/O of the nftables backend's netlink path: the socket that
// sends a batch nftrules encoded (nftrules.Batch) and reads the kernel's
// replies, and the listing of a netns's tables. Everything here runs in
// the calling thread's netns.

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// nftNetlinkApply programs tables in the current thread's netns as one
// transaction: per family, add the table, flush it, add its chains and
// rules (the shape of nftrules.Script). nftrules.ErrNotNative means
// nothing was sent.
func nftNetlinkApply(tables []nftrules.Table) error {
	b, err := nftrules.Batch(tables)
	if err != nil {
		return err
	}
	return send(b)
}

// nftNetlinkDelete deletes meshcni's table of each family, in one
// transaction.
func nftNetlinkDelete(fams []rules.Family) error {
	return send(nftrules.DeleteBatch(fams...))
}

// send sends b on a new NETLINK_NETFILTER socket of the current thread's
// netns. The kernel handles the whole batch inside the send and reports
// in message order: a failing message's error (or the commit's) comes
// before the ack of the last message.
func send(b *nftrules.NetlinkBatch) error {
	buf, count := b.Bytes(), b.Messages()
	if count <= 2 {
		return nil // begin and end only: nothing to do, and no ack would come
	}
	fd, err := openNFT()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if len(buf) > 128<<10 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 2*len(buf))
	}
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send nftables batch: %w", err)
	}
	lastSeq := count - 1
	rb := make([]byte, 64<<10)
	for {
		msgs, err := recvNFT(fd, rb)
		if err != nil {
			return fmt.Errorf("nftables batch reply: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if err := replyErr(m); err != nil {
				return fmt.Errorf("nftables batch, message %d of %d: %w", m.Header.Seq, count, err)
			}
			if m.Header.Seq == lastSeq {
				return nil
			}
		}
	}
}

// openNFT opens a blocking NETLINK_NETFILTER socket in the current
// thread's netns. Plain syscalls, no poller: a fresh plug-in process
// spent more on setting up a google/nftables Conn than on the question.
func openNFT() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("open nftables netlink: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind nftables netlink: %w", err)
	}
	// Never wait forever for a reply the kernel does not send.
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return fd, nil
}

// recvNFT reads the next datagram of replies. With SO_RCVTIMEO set, the
// kernel does not restart a read that a signal interrupts (Go preempts
// goroutines with SIGURG), so EINTR is retried here.
func recvNFT(fd int, buf []byte) ([]syscall.NetlinkMessage, error) {
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return syscall.ParseNetlinkMessage(buf[:n])
	}
}

// replyErr is the errno an NLMSG_ERROR reply carries; nil for an ack
// (error 0) or a reply too short to carry one.
func replyErr(m syscall.NetlinkMessage) error {
	if len(m.Data) < 4 {
		return nil
	}
	if code := int32(binaryutil.NativeEndian.Uint32(m.Data[:4])); code != 0 {
		return syscall.Errno(-code)
	}
	return nil
}

// nftTable names one nftables table.
type nftTable struct {
	Family nftables.TableFamily
	Name   string
}

// listTables dumps the nftables tables of the current thread's netns,
// every family, on one socket.
func listTables() ([]nftTable, error) {
	fd, err := openNFT()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, nftrules.ListTablesRequest(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var tables []nftTable
	rb := make([]byte, 64<<10)
	for {
		msgs, err := recvNFT(fd, rb)
		if err != nil {
			return nil, fmt.Errorf("list nftables tables: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return tables, nil
			case unix.NLMSG_ERROR:
				if err := replyErr(m); err != nil {
					return nil, fmt.Errorf("list nftables tables: %w", err)
				}
				return tables, nil
			case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE:
				if len(m.Data) < 4 {
					continue
				}
				ad, err := netlink.NewAttributeDecoder(m.Data[4:]) // after the nfgenmsg
				if err != nil {
					return nil, fmt.Errorf("list nftables tables: %w", err)
				}
				t := nftTable{Family: nftables.TableFamily(m.Data[0])}
				for ad.Next() {
					if ad.Type() == unix.NFTA_TABLE_NAME {
						t.Name = ad.String()
					}
				}
				if err := ad.Err(); err != nil {
					return nil, fmt.Errorf("list nftables tables: %w", err)
				}
				tables = append(tables, t)
			}
		}
	}
}
